FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY state ./state
COPY proxy ./proxy
COPY control ./control
COPY abgate ./abgate
COPY scripts/sql ./scripts/sql
ENV ABGATE_SQL_DIR=/app/scripts/sql
RUN pip install --no-cache-dir . \
    && mkdir -p /etc/abgate && cp config/abgate.yaml /etc/abgate/abgate.yaml \
    && mkdir -p /var/lib/abgate && chown nobody /var/lib/abgate

# Listen addresses come from the config: mount one that listens on 0.0.0.0.
EXPOSE 8080 8092
USER nobody
# The state file (flags.state_file, default .abgate/flags.json) is relative to here, which the
# unprivileged user can write; mount a volume on it to keep flags across containers.
WORKDIR /var/lib/abgate
VOLUME /var/lib/abgate
ENTRYPOINT ["abgate"]
CMD ["run", "--config", "/etc/abgate/abgate.yaml"]
