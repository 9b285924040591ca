FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY proxy ./proxy
COPY control ./control
RUN pip install --no-cache-dir . \
    && mkdir -p /etc/abgate && cp config/abgate.yaml /etc/abgate/abgate.yaml

# Listen addresses come from the config: mount one that listens on 0.0.0.0.
EXPOSE 8080 8092
USER nobody
ENTRYPOINT ["abgate"]
CMD ["run", "--config", "/etc/abgate/abgate.yaml"]
