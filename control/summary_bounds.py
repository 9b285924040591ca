"""The bounds of a summary the statistics take (control/stats/models.py checks them, naming
the field; control/stats_payloads.py states them in the OpenAPI document). Beyond them the
arithmetic of the tests overflows or loses every digit. Outside control/stats/, whose
package loads scipy: the payloads are imported where scipy must not be."""

MAX_N = 10**12
MAX_MAGNITUDE = 1e100
MIN_STD = 1e-50
