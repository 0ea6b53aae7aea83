#!/usr/bin/env python3
"""A stand-in for the reference Python service, for the interoperability test.

create_api_key() makes keys exactly as the service does: "pk_"/"sk_" and 32 characters
drawn with secrets.choice from [A-Za-z0-9], a uuid4 key id, and as the stored digest
hmac.new(API_KEY_SECRET.encode(), secret_key.encode(), hashlib.sha256).hexdigest().
The script writes rows of its `api_keys` table the two ways they leave it:

  keys.jsonl        one JSON object per line, as its REST API returns them
                    (timestamps "2026-11-24T19:00:28.123456+00:00", NULL as null);
  keys.csv          as PostgreSQL's `COPY api_keys TO ... WITH (FORMAT csv, HEADER)`
                    writes them (timestamps "2026-11-24 19:00:28.123456+00", trailing
                    zeros of the fraction dropped, NULL as an unquoted empty field);
  api_key_secret    API_KEY_SECRET, with the line break `echo` adds;
  secrets.tsv       for the test, one line per row: what verify must answer (valid,
                    revoked, expired, or rejected for a row import must refuse), the
                    public key, the secret key, and the line the row starts on in
                    keys.jsonl and in keys.csv.

Among the rows: titles with a comma, a quote and non-ASCII letters, a description with
a comma and a line break, NULL and empty descriptions, NULL expiries, one revoked row,
one expired row (past its expiry), a row used before, and a row whose title holds a line
break (the service allowed it; apikeys refuses control characters in titles, so import
rejects that row and reports its line).

Only the Python standard library; usage: reference_service.py OUT_DIR [ROWS]
"""

import datetime
import hashlib
import hmac
import json
import os
import secrets
import string
import sys
import uuid

API_KEY_SECRET = "change-me-in-prod"  # as short as a real deployment's may be
ALPHABET = string.ascii_letters + string.digits
COLUMNS = ["key_id", "public_key", "secret_key_hash", "account_id", "title", "description",
           "status", "expires_at", "last_used_at", "created_at"]


def generate_key(prefix):
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(32))


def create_api_key(account_id, title, description=None, expires_at=None, now=None):
    """The service's create_api_key: the row it inserts, and the secret it shows once."""
    public_key = generate_key("pk_")
    secret_key = generate_key("sk_")
    secret_key_hash = hmac.new(API_KEY_SECRET.encode(), secret_key.encode(),
                               hashlib.sha256).hexdigest()
    row = {
        "key_id": str(uuid.uuid4()),
        "public_key": public_key,
        "secret_key_hash": secret_key_hash,
        "account_id": account_id,
        "title": title,
        "description": description,
        "status": "active",
        "expires_at": expires_at,
        "last_used_at": None,
        "created_at": now or datetime.datetime.now(datetime.timezone.utc),
    }
    return row, secret_key


def json_value(v):
    return v.isoformat() if isinstance(v, datetime.datetime) else v


def pg_timestamp(t):
    """timestamptz as PostgreSQL prints it with TimeZone UTC."""
    text = t.strftime("%Y-%m-%d %H:%M:%S")
    if t.microsecond:
        text += ("." + "%06d" % t.microsecond).rstrip("0")
    return text + "+00"


def csv_field(v):
    """One field as COPY ... CSV writes it: NULL unquoted and empty; a value quoted when
    it is empty or holds the delimiter, a quote or a line break, quotes doubled."""
    if v is None:
        return ""
    if isinstance(v, datetime.datetime):
        v = pg_timestamp(v)
    if v == "" or any(c in v for c in ',"\n\r'):
        return '"' + v.replace('"', '""') + '"'
    return v


def make_rows(count):
    utc = datetime.timezone.utc
    now = datetime.datetime.now(utc).replace(microsecond=123456)
    accounts = [str(uuid.uuid4()) for _ in range(3)]
    rows = []
    for i in range(max(count, 12)):
        created = now - datetime.timedelta(days=40 - i % 30, seconds=i * 7)
        title, description, expect = "Key %d" % i, "Imported from the service", "valid"
        expires = now + datetime.timedelta(days=30 + i) if i % 2 else None
        if i == 0:
            title = "Prod, EU"
        elif i == 1:
            title = 'Say "hi"'
        elif i == 2:
            title, expect = "line one\nline two", "rejected"
        elif i == 3:
            description = "two lines,\nand a comma"
        elif i == 6:
            description = None
        elif i == 7:
            description = ""
        elif i == 8:
            title = "Clé d'accès € 🔑"
        elif i == 10:
            created = created.replace(microsecond=0)
        elif i == 11:
            created = created.replace(microsecond=120000)
        row, secret = create_api_key(accounts[i % 3], title, description, expires, created)
        if i == 4:
            row["status"], expect = "revoked", "revoked"
        elif i == 5:
            row["status"], expect = "expired", "expired"
            row["expires_at"] = now - datetime.timedelta(days=1)
        elif i == 9:
            row["last_used_at"] = now - datetime.timedelta(hours=3)
        rows.append((row, secret, expect))
    return rows


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    rows = make_rows(int(sys.argv[2]) if len(sys.argv) == 3 else 20)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "api_key_secret"), "w", encoding="utf-8") as f:
        f.write(API_KEY_SECRET + "\n")
    jsonl_lines, csv_lines = [], []
    with open(os.path.join(out, "keys.jsonl"), "w", encoding="utf-8", newline="") as f:
        for n, (row, _, _) in enumerate(rows, start=1):
            f.write(json.dumps({k: json_value(row[k]) for k in COLUMNS}, ensure_ascii=False))
            f.write("\n")
            jsonl_lines.append(n)
    with open(os.path.join(out, "keys.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(",".join(COLUMNS) + "\n")
        line = 2
        for row, _, _ in rows:
            text = ",".join(csv_field(row[k]) for k in COLUMNS)
            f.write(text + "\n")
            csv_lines.append(line)
            line += 1 + text.count("\n")
    with open(os.path.join(out, "secrets.tsv"), "w", encoding="utf-8") as f:
        for (row, secret, expect), jl, cl in zip(rows, jsonl_lines, csv_lines):
            f.write("\t".join([expect, row["public_key"], secret, str(jl), str(cl)]) + "\n")


if __name__ == "__main__":
    main()
