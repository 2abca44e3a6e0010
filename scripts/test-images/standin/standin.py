#!/usr/bin/env python3
"""Stand-in for the dForge auth and app services in the end-to-end tests of `dforge install`.

It consumes what dforge hands those services: it loads the tenant catalog at start and on SIGHUP,
and reaches each tenant's database as the tenant's own role over TLS verified against the
install CA. Only the standard library and psql, so the image needs no package index beyond Debian.
"""

import json
import os
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CATALOG_FILE = os.environ.get("DFORGE_CATALOG", "/run/dforge/tenants/catalog.json")
CA_FILE = os.environ.get("DFORGE_CA_FILE", "/run/dforge/ca.crt")
SERVICE = os.environ.get("SERVICE_NAME", "")
PORT = int(os.environ.get("PORT", "8080"))
PING_SQL = "select current_user, current_database()"

# (reload counter, tenants by slug); replaced whole, so a request sees one load or the next.
catalog = (0, {})


def log(message):
    print(f"standin[{SERVICE or '-'}]: {message}", file=sys.stderr, flush=True)


def read_catalog():
    try:
        with open(CATALOG_FILE, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    if doc.get("version") != 1:
        raise ValueError(f"unsupported catalog version {doc.get('version')!r}")
    return {tenant["slug"]: tenant for tenant in doc["tenants"]}


def load_catalog():
    global catalog
    tenants = read_catalog()
    catalog = (catalog[0] + 1, tenants)
    log(f"loaded {len(tenants)} tenant(s) from {CATALOG_FILE} (load {catalog[0]})")


def on_sighup(_signum, _frame):
    try:
        load_catalog()
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"catalog reload failed, keeping load {catalog[0]}: {err}")


def conninfo(**params):
    """A libpq connection string; values quoted so no catalog field can inject another key."""
    def quote(value):
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


def ping(tenant):
    """Connects as the tenant: (status, body). The password travels in the child's environment."""
    try:
        with open(tenant["passwordFile"], encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
    except OSError as err:
        return 502, {"error": f"cannot read the password file {tenant['passwordFile']}: {err.strerror}"}
    dsn = conninfo(
        host=tenant["host"],
        port=tenant["port"],
        dbname=tenant["database"],
        user=tenant["role"],
        sslmode=tenant.get("sslmode", "verify-full"),
        sslrootcert=CA_FILE,
        connect_timeout=5,
    )
    try:
        result = subprocess.run(
            ["psql", "--no-psqlrc", "--no-password", "--tuples-only", "--no-align",
             "--field-separator=\t", "--set=ON_ERROR_STOP=1", f"--command={PING_SQL}", f"--dbname={dsn}"],
            env={**os.environ, "PGPASSWORD": password},
            capture_output=True, text=True, timeout=20, check=False,
        )
    except subprocess.TimeoutExpired:
        return 502, {"error": "psql timed out"}
    if result.returncode != 0:
        return 502, {"error": result.stderr.strip()}
    user, database = result.stdout.strip().split("\t")
    return 200, {"user": user, "database": database}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts == ["healthz"]:
            self.reply(200, f"ok {SERVICE}".strip(), "text/plain")
        elif parts == ["tenants"]:
            loaded_at, tenants = catalog
            self.reply(200, {"loadedAt": loaded_at, "tenants": list(tenants)})
        elif len(parts) == 3 and parts[0] == "tenants" and parts[2] == "ping":
            tenant = catalog[1].get(parts[1])
            if tenant is None:
                self.reply(404, {"error": f"unknown tenant {parts[1]}"})
            elif tenant.get("status") != "active":
                self.reply(403, {"error": f"tenant {parts[1]} is {tenant.get('status')}"})
            else:
                self.reply(*ping(tenant))
        else:
            self.reply(404, {"error": f"no route {self.path}"})

    def reply(self, status, body, content_type="application/json"):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # Health checks poll every few seconds; only the interesting requests are logged.
        if not self.path.startswith("/healthz"):
            log(f"{self.address_string()} {format % args}")


def main():
    # Handlers first: an early SIGHUP's default action would end the process.
    signal.signal(signal.SIGHUP, on_sighup)
    # PID 1 gets no default SIGTERM handling, and `docker stop` would otherwise wait 10 s to kill.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    load_catalog()
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    log(f"listening on 0.0.0.0:{PORT}")
    server.serve_forever()


if __name__ == "__main__":
    main()
