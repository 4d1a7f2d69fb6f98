"""The store stays flat: the four conversation operations on an empty database and on a full one, in one run.

    python3 bench/store_scale.py                                   # 1,000,000 conversations, SQLite and PostgreSQL
    python3 bench/store_scale.py --database sqlite --conversations 100000 --requests 100    # a quick look
    python3 bench/store_scale.py --plans-only --conversations 20000   # only the query plans, on a small load

For each database (SQLite, PostgreSQL 15 in a throwaway cluster from tests/pg.py) two databases are made
by the server's own migrations (app/store/migrate.py), in a temporary folder that is removed afterwards:

- EMPTY holds only the measured users' conversations;
- FULL holds the same, plus --conversations more spread over --owners other users (100 each by default),
  each with --messages messages chained by parent_id as ChatService stores them, realistic titles, prompt
  and reply lengths, and times over the last year; 5% of the conversations have a rating
  (message_feedback). The measured users' conversations are the same rows in both (the same seed),
  spread evenly through FULL's tables, so only the tables' size differs.

The measured users, each with 100 conversations of --messages messages in both databases:
`bench-starter` starts conversations, `bench-follower` follows up on its conversations (one after the
other, so each grows by the same number of turns in both databases), `bench-reader` lists (GET
/api/conversations, the first page of 50) and reads (GET /api/conversations/<id>, with its messages)
and never writes, so its list and its conversations stay exactly as loaded.

FULL is loaded straight through the driver, after the migrations made the schema: SQLite by executemany
in big transactions, PostgreSQL by COPY; the secondary indexes (and on PostgreSQL the keys) of the three
big tables are dropped first and made again afterwards from their own definitions (the schema is then
checked to be the migrations' own). PostgreSQL then gets VACUUM ANALYZE (both databases alike); SQLite
gets no ANALYZE, as the server never runs one.

Then one real server per database (`python3 main.py`, bench/run.py's start_server, 2 gevent workers by
default) with one openai account on bench/fastfake.py, both running the whole time; the requests are
sent one at a time over keep-alive (requests.Session) on 127.0.0.1. Rounds alternate EMPTY/FULL (odd rounds
EMPTY first, even rounds FULL first) so a machine that speeds up or slows down mid-run touches both alike;
each round times --requests requests of each operation on each database. The table gives p50 and p90
(ms) over all the rounds' requests, and the FULL/EMPTY ratio: the median of the rounds' ratios, with
their range. PASS when the median ratio of p50 and of p90 are each at most 1.5.

Then the query plans: an in-process app (create_app) on FULL does each operation once more while every
statement sent to the database is captured (SQLAlchemy's before_cursor_execute, and the few statements
app/store/raw.py sends straight to the driver); each distinct statement is explained with its own
parameters (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN) and a full scan of a big table (over 10,000
rows) is flagged: SQLite's `SCAN <table>` (with or without a covering index) and PostgreSQL's `Seq Scan`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import requests  # noqa: E402
from run import ADMIN_KEY, HOST, openai_account, start_fake, start_server, stop  # noqa: E402
from sqlalchemy import create_engine, event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from app.store import migrate  # noqa: E402

OPS = ("new", "follow-up", "list", "read")
OP_NAMES = {
    "new": "POST /api/chat (new conversation)",
    "follow-up": "POST /api/chat (follow-up)",
    "list": "GET /api/conversations",
    "read": "GET /api/conversations/<id>",
}
MEASURED = ("bench-starter", "bench-follower", "bench-reader")
MEASURED_CONVERSATIONS = 100  # each measured user's, in EMPTY and FULL alike
BIG_TABLES = ("conversations", "messages", "message_feedback")  # loaded in bulk
BIG = 10_000  # rows: a full scan of a table this big is flagged
TARGET = 1.5
YEAR = 365 * 86400

WORDS_TEXT = (
    "the of and to in is you that it for on with as are this be at have or from an by not but what all were "
    "when we there can your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just "
    "where most know get through back much before go good new write our used me man too any day same right "
    "look think also around another came come work three word must because does part even place well such "
    "here take why things help put years different away again off went old number great tell men say small "
    "every found still between name should home big give air line set own under read last never us left end "
    "along while might next sound below saw something thought both few those always looked show large often "
    "together asked house don't world going want school important until form food keep children feet land "
    "side without boy once animals life enough took sometimes four head above kind began almost live page "
    "got earth need far hand high year mother light parts country father let night following picture being "
    "study second eyes soon times story boys since white days ever paper hard near sentence better best "
    "across during today others however sure means knew it's try told young miles sun ways thing whole hear "
    "example heard several change answer room sea against top turned learn point city play toward five using "
    "proxy socks python server database index query plan table row column function error request response "
    "model token account stream upstream cache latency memory thread worker process file network socket "
    "http json api key user admin client conversation message reply prompt history limit quota migration"
)
WORDS = WORDS_TEXT.split()


# -- the data ----------------------------------------------------------------------------------


class Gen:
    """Deterministic rows (same seed, same rows): conversations, their messages and some ratings."""

    def __init__(self, seed: int, now: float, messages: int):
        self.rng = random.Random(seed)
        self.now = now
        self.messages = messages
        corpus_rng = random.Random(1234)  # one corpus for every generator
        self.corpus = " ".join(corpus_rng.choice(WORDS) for _ in range(400_000))
        self.size = len(self.corpus)

    def uid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"

    def text(self, low: int, high: int) -> str:
        n = self.rng.randint(low, high)
        start = self.rng.randrange(self.size - n)
        return self.corpus[start : start + n].strip() or "hello"

    def conversation(self, owner: str) -> tuple[tuple, list[tuple], list[tuple]]:
        """(conversation row, message rows, feedback rows) in the tables' column order."""
        rng, cid = self.rng, self.uid()
        at = self.now - rng.random() * YEAR
        created, parent, rows = at, None, []
        first_prompt = None
        for _ in range(self.messages):
            mid = self.uid()
            prompt = self.text(20, 200)
            first_prompt = first_prompt or prompt
            done = at + rng.uniform(1.0, 25.0)
            rows.append((mid, cid, parent, prompt, self.text(60, 800), "fake-model", "fake", None, True, at, done))
            parent, at = mid, done + rng.uniform(20.0, 900.0)
        title = " ".join(first_prompt.split()[:8])[:60]
        conv = (cid, owner, title, "fake", None, None, created, rows[-1][10] if rows else created)
        feedback = []
        if rows and rng.random() < 0.05:
            m = rng.choice(rows)
            feedback.append((m[0], cid, rng.choice(("thumbsUp", "thumbsDown")), m[10] + 30))
        return conv, rows, feedback


def batches(total: int, owners: int, messages: int, now: float, batch: int = 5000):
    """Batches of (conversations, messages, feedback): `total` background conversations over `owners`
    owners, with the measured users' (the same rows whatever `total`) spread evenly among them. Within a
    batch the messages go round by round (every conversation's first, then every second...), so one
    conversation's messages lie apart in the table, as turns made over time do."""
    background = Gen(7, now, messages)
    measured = Gen(11, now, messages)
    owner_ids = [f"u-{random.Random(i).getrandbits(64):016x}" for i in range(max(1, owners))]
    measured_left = [(user, i) for i in range(MEASURED_CONVERSATIONS) for user in MEASURED]
    n_batches = max(1, -(-total // batch))
    per_batch = -(-len(measured_left) // n_batches)
    made = 0
    while made < total or measured_left:
        items = [measured.conversation(user) for user, _ in measured_left[:per_batch]]
        measured_left = measured_left[per_batch:]
        count = min(batch, total - made)
        items += [background.conversation(owner_ids[(made + i) % len(owner_ids)]) for i in range(count)]
        made += count
        background.rng.shuffle(items)
        convs = [conv for conv, _, _ in items]
        rows = [msgs[k] for k in range(messages) for _, msgs, _ in items if k < len(msgs)]
        feedback = [f for _, _, fs in items for f in fs]
        yield convs, rows, feedback


# -- loading -----------------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def load_sqlite(path: Path, data, progress) -> dict:
    """Insert the batches with executemany, the tables' secondary indexes dropped first and made again after."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")  # the server makes it WAL again when it starts
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-3000000")  # 3 GB: the primary keys' random inserts stay in memory
    db.execute("PRAGMA temp_store=MEMORY")
    marks = ",".join("?" * len(BIG_TABLES))
    indexes = db.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({marks})",  # noqa: S608
        BIG_TABLES,
    ).fetchall()
    before = schema_sqlite(db)
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    counts = {"conversations": 0, "messages": 0, "message_feedback": 0}
    started = time.perf_counter()
    db.execute("BEGIN")
    for convs, rows, feedback in data:
        db.executemany("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", convs)
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO message_feedback VALUES (?, ?, ?, ?)", feedback)
        counts["conversations"] += len(convs)
        counts["messages"] += len(rows)
        counts["message_feedback"] += len(feedback)
        if counts["conversations"] % 100_000 < len(convs):
            db.execute("COMMIT")
            db.execute("BEGIN")
            progress(counts, started)
    db.execute("COMMIT")
    inserted = time.perf_counter() - started
    for _, sql in indexes:
        db.execute(sql)
    if schema_sqlite(db) != before:
        raise SystemExit("the SQLite schema changed while loading")
    db.close()
    return {**counts, "insert_s": inserted, "total_s": time.perf_counter() - started}


def schema_sqlite(db) -> list:
    return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def pg_dsn(url: str) -> str:
    rest = url.split("://", 1)[1]
    userhost, dbname = rest.rsplit("/", 1)
    user, hostport = userhost.split("@")
    host, port = hostport.split(":")
    return f"host={host} port={port} user={user} dbname={dbname}"


def copy_text(rows) -> str:
    """Rows as COPY's text format (the generated texts hold no tab, newline or backslash)."""

    def field(value) -> str:
        if value is None:
            return "\\N"
        if value is True:
            return "t"
        if value is False:
            return "f"
        return value if isinstance(value, str) else repr(value)

    return "".join("\t".join(map(field, row)) + "\n" for row in rows)


def load_postgresql(url: str, data, progress) -> dict:
    """COPY the batches in, the big tables' keys, foreign keys and indexes dropped first and made again after."""
    import psycopg

    with psycopg.connect(pg_dsn(url)) as db:
        before = schema_postgresql(db)
        tables = "('" + "','".join(BIG_TABLES) + "')"
        constraints = db.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype FROM pg_constraint "  # noqa: S608
            f"WHERE (conrelid::regclass::text IN {tables} OR confrelid::regclass::text IN {tables}) "
            "AND contype IN ('p', 'u', 'f')"
        ).fetchall()
        indexes = db.execute(
            f"SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN {tables} AND indexname NOT IN "  # noqa: S608
            "(SELECT conname FROM pg_constraint)"
        ).fetchall()
        for table, name, _, _kind in sorted(constraints, key=lambda c: c[3] != "f"):  # foreign keys first
            db.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        db.commit()
        counts = {"conversations": 0, "messages": 0, "message_feedback": 0}
        started = time.perf_counter()
        with db.cursor() as cur:
            for convs, rows, feedback in data:
                for table, chunk in (("conversations", convs), ("messages", rows), ("message_feedback", feedback)):
                    if chunk:
                        with cur.copy(f"COPY {table} FROM STDIN") as copy:
                            copy.write(copy_text(chunk))
                        counts[table] += len(chunk)
                if counts["conversations"] % 100_000 < len(convs):
                    db.commit()
                    progress(counts, started)
        db.commit()
        inserted = time.perf_counter() - started
        db.execute("SET maintenance_work_mem = '1GB'")
        for table, name, definition, _ in sorted(constraints, key=lambda c: c[3] == "f"):  # keys first
            db.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            db.execute(definition)
        db.commit()
        if schema_postgresql(db) != before:
            raise SystemExit("the PostgreSQL schema changed while loading")
    vacuum_analyze(url)
    return {**counts, "insert_s": inserted, "total_s": time.perf_counter() - started}


def vacuum_analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn(url), autocommit=True) as db:
        db.execute("VACUUM ANALYZE")


def schema_postgresql(db) -> list:
    indexes = db.execute("SELECT tablename, indexname, indexdef FROM pg_indexes ORDER BY 1, 2").fetchall()
    constraints = db.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint ORDER BY 1, 2"
    ).fetchall()
    return indexes + constraints


def report_progress(label: str):
    def progress(counts: dict, started: float) -> None:
        seconds = time.perf_counter() - started
        print(
            f"    {label}: {counts['conversations']:,} conversations, {counts['messages']:,} messages in "
            f"{seconds:.0f} s ({counts['messages'] / max(seconds, 1e-9):,.0f} messages/s)",
            flush=True,
        )

    return progress


# -- the servers and the timing ----------------------------------------------------------------


class Case:
    """One database (EMPTY or FULL) and its running server, with the measured users' keys and conversations."""

    def __init__(self, label: str, url: str, folder: Path, fake_url: str):
        self.label, self.url = label, url
        folder.mkdir(parents=True, exist_ok=True)
        self.proc, self.base = start_server(folder, fake_url, extra={"database_url": url})
        self.session = requests.Session()
        self.session.trust_env = False
        self.keys = {}
        for user in MEASURED:
            made = self.session.post(
                self.base + "/api/users",
                json={"username": user, "user_id": user},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30,
            )
            made.raise_for_status()
            self.keys[user] = {"Authorization": f"Bearer {made.json()['api_key']}"}
        self.conversations = {user: self.owned(user) for user in MEASURED}
        if any(len(ids) != MEASURED_CONVERSATIONS for ids in self.conversations.values()):
            raise SystemExit(f"{label}: the measured users do not own {MEASURED_CONVERSATIONS} conversations each")
        self.sent = {op: 0 for op in OPS}

    def owned(self, user: str) -> list[str]:
        ids = []
        for offset in range(0, MEASURED_CONVERSATIONS + 100, 100):
            page = self.session.get(
                self.base + "/api/conversations",
                params={"limit": 100, "offset": offset},
                headers=self.keys[user],
                timeout=30,
            ).json()
            ids += [c["conversation_id"] for c in page["conversations"]]
        return sorted(ids)

    def send(self, op: str) -> requests.Response:
        i = self.sent[op]
        self.sent[op] += 1
        s, base = self.session, self.base
        if op == "new":
            body = {"prompt": f"A new question, number {i}, about socks proxies"}
            return s.post(base + "/api/chat", json=body, headers=self.keys["bench-starter"], timeout=60)
        if op == "follow-up":
            ids = self.conversations["bench-follower"]
            body = {"prompt": f"And a follow-up, number {i}?", "conversation_id": ids[i % len(ids)]}
            return s.post(base + "/api/chat", json=body, headers=self.keys["bench-follower"], timeout=60)
        if op == "list":
            return s.get(base + "/api/conversations", headers=self.keys["bench-reader"], timeout=60)
        ids = self.conversations["bench-reader"]
        return s.get(f"{base}/api/conversations/{ids[i % len(ids)]}", headers=self.keys["bench-reader"], timeout=60)

    def check(self, op: str, response: requests.Response, messages: int) -> None:
        if response.status_code != 200:
            raise SystemExit(f"{self.label} {op}: {response.status_code} {response.text[:300]}")
        if op == "list":
            page = response.json()
            if page["total"] != MEASURED_CONVERSATIONS or len(page["conversations"]) != 50:
                raise SystemExit(f"{self.label} list: {page['total']} conversations, {len(page['conversations'])}")
        if op == "read" and len(response.json()["messages"]) != messages:
            raise SystemExit(f"{self.label} read: {len(response.json()['messages'])} messages, not {messages}")

    def time(self, op: str, n: int, messages: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            response = self.send(op)
            times.append((time.perf_counter() - started) * 1000)
            self.check(op, response, messages)
        return times

    def close(self) -> None:
        self.session.close()
        stop(self.proc)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(cases: dict[str, Case], args) -> dict:
    """Rounds alternating EMPTY/FULL; {(case, op): [[ms...] per round]}."""
    for case in cases.values():  # warm up: both workers, connections, caches
        for op in OPS:
            case.time(op, args.warmup, args.messages)
    samples = {(label, op): [] for label in cases for op in OPS}
    for r in range(args.rounds):
        order = ["EMPTY", "FULL"] if r % 2 == 0 else ["FULL", "EMPTY"]
        for op in OPS:
            for label in order:
                samples[label, op].append(cases[label].time(op, args.requests, args.messages))
        print(f"    round {r + 1} of {args.rounds} done", flush=True)
    return samples


def summarise(name: str, samples: dict, rounds: int) -> tuple[list[str], list[dict]]:
    lines = [
        f"{name}: ms per request, {rounds} rounds; ratio = FULL/EMPTY, the median of the rounds' ratios [min-max]",
        f"  {'operation':<36}{'EMPTY p50':>10}{'p90':>8}{'FULL p50':>10}{'p90':>8}"
        f"{'ratio p50':>24}{'ratio p90':>24}   target <= {TARGET}x",
    ]
    rows = []
    for op in OPS:
        empty, full = samples["EMPTY", op], samples["FULL", op]
        every_empty = [t for chunk in empty for t in chunk]
        every_full = [t for chunk in full for t in chunk]
        ratios = {}
        for q, key in ((0.5, "p50"), (0.9, "p90")):
            per_round = [quantile(f, q) / quantile(e, q) for e, f in zip(empty, full, strict=True)]
            ratios[key] = (statistics.median(per_round), min(per_round), max(per_round))
        row = {
            "op": op,
            "empty_p50": quantile(every_empty, 0.5),
            "empty_p90": quantile(every_empty, 0.9),
            "full_p50": quantile(every_full, 0.5),
            "full_p90": quantile(every_full, 0.9),
            "ratio_p50": ratios["p50"],
            "ratio_p90": ratios["p90"],
        }
        row["pass"] = row["ratio_p50"][0] <= TARGET and row["ratio_p90"][0] <= TARGET
        rows.append(row)

        def shown(ratio) -> str:
            return f"{ratio[0]:.2f} [{ratio[1]:.2f}-{ratio[2]:.2f}]"

        lines.append(
            f"  {OP_NAMES[op]:<36}{row['empty_p50']:>10.2f}{row['empty_p90']:>8.2f}{row['full_p50']:>10.2f}"
            f"{row['full_p90']:>8.2f}{shown(row['ratio_p50']):>24}{shown(row['ratio_p90']):>24}   "
            f"{'PASS' if row['pass'] else 'MISS'}"
        )
    return lines, rows


# -- the query plans ---------------------------------------------------------------------------


class Capture:
    """Every statement the app sends to a database while `op` is set: SQLAlchemy's, and app/store/raw.py's."""

    def __init__(self):
        self.op = None
        self.statements: dict[str, list[list]] = {}  # op: [[statement, first parameters, times run]]

    def __enter__(self):
        from app.store import raw

        event.listen(Engine, "before_cursor_execute", self._sqlalchemy)
        self._raw_run = raw.Raw.run
        capture = self

        def run(statement, db, *params):
            capture.add(statement._text(db.dialect.paramstyle), params)
            return capture._raw_run(statement, db, *params)

        raw.Raw.run = run
        return self

    def __exit__(self, *exc):
        from app.store import raw

        event.remove(Engine, "before_cursor_execute", self._sqlalchemy)
        raw.Raw.run = self._raw_run

    def _sqlalchemy(self, conn, cursor, statement, parameters, context, executemany):
        if executemany and parameters:
            parameters = parameters[0]
        self.add(statement, parameters)

    def add(self, statement: str, parameters) -> None:
        if self.op is None:
            return
        text = " ".join(statement.split())
        if re.match(r"(?i)(BEGIN|COMMIT|ROLLBACK|PRAGMA|SET |SELECT pg_|SHOW |select pg_|select current_schema)", text):
            return
        seen = self.statements.setdefault(self.op, [])
        for item in seen:
            if item[0] == text:
                item[2] += 1
                return
        seen.append([text, parameters, 1])


def capture_statements(url: str, fake_url: str, folder: Path) -> dict[str, list]:
    """Run the four operations once in an in-process app on the database; return each one's statements."""
    from app import create_app

    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "app_secret": "bench-plans",
        "accounts": [openai_account("fake", fake_url)],
        "users_file": str(folder / "users.json"),
        "database_url": url,
    }
    app = create_app(settings, base_dir=folder, admin_key=ADMIN_KEY)
    client = app.test_client()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = {}
    for user in MEASURED:
        made = client.post("/api/users", json={"username": user, "user_id": user}, headers=admin)
        keys[user] = {"Authorization": f"Bearer {made.get_json()['api_key']}"}
    follower = client.get("/api/conversations", headers=keys["bench-follower"]).get_json()["conversations"][0]
    reader = client.get("/api/conversations", headers=keys["bench-reader"]).get_json()["conversations"][0]
    calls = {
        "new": lambda: client.post("/api/chat", json={"prompt": "plans: a new one"}, headers=keys["bench-starter"]),
        "follow-up": lambda: client.post(
            "/api/chat",
            json={"prompt": "plans: a follow-up", "conversation_id": follower["conversation_id"]},
            headers=keys["bench-follower"],
        ),
        "list": lambda: client.get("/api/conversations", headers=keys["bench-reader"]),
        "read": lambda: client.get(f"/api/conversations/{reader['conversation_id']}", headers=keys["bench-reader"]),
    }
    try:
        with Capture() as capture:
            for op in OPS:
                calls[op]()  # once unmeasured: what runs once per process (first pool write...) is not the op's
                capture.op = op
                response = calls[op]()
                capture.op = None
                if response.status_code != 200:
                    raise SystemExit(f"plans, {op}: {response.status_code} {response.get_data(as_text=True)[:300]}")
                time.sleep(0.1)  # the usage ledger's deferred write (50 ms) lands inside the next op otherwise
        return capture.statements
    finally:
        services = app.extensions["services"]
        services.pool.close()
        services.store.close()


def explain(url: str, statements: dict[str, list]) -> tuple[list[str], list[str]]:
    """Each operation's statements with their plans (FULL); and the flagged full scans of big tables."""
    lines, flagged = [], []
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.split("///", 1)[1])
        sizes = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in table_names(db)}  # noqa: S608

        def plan(statement, parameters):
            rows = db.execute("EXPLAIN QUERY PLAN " + statement, parameters or ()).fetchall()
            depth = {0: 0}
            out = []
            for node, parent, _, detail in rows:
                depth[node] = depth.get(parent, 0) + 1
                out.append("  " * (depth[node] - 1) + detail)
            return out

        def scans(line):
            found = re.match(r"\s*SCAN (\w+)", line)
            return found and sizes.get(found[1], 0) > BIG

    else:
        import psycopg

        db = psycopg.connect(pg_dsn(url), autocommit=True)
        sizes = {
            name: int(rows)
            for name, rows in db.execute(
                "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            ).fetchall()
        }

        def plan(statement, parameters):
            cursor = psycopg.ClientCursor(db)  # the values inlined: the plan for these very values
            cursor.execute("EXPLAIN " + statement, parameters or None)
            return [row[0] for row in cursor.fetchall()]

        def scans(line):
            found = re.search(r"Seq Scan on (\w+)", line)
            return found and sizes.get(found[1], 0) > BIG

    try:
        for op in OPS:
            lines.append(f"  {OP_NAMES[op]}:")
            for statement, parameters, times in statements.get(op, []):
                lines.append(f"    {statement}" + (f"   (run {times} times)" if times > 1 else ""))
                shown = plan(statement, parameters)
                for line in shown or ["(no plan: writes one row by its values)"]:
                    mark = "   <-- FULL SCAN of a big table" if scans(line) else ""
                    lines.append(f"        {line}{mark}")
                    if mark:
                        flagged.append(f"{op}: {line.strip()} in {statement[:120]}")
    finally:
        db.close()
    return lines, flagged


def table_names(db) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def index_list(url: str) -> list[str]:
    """The big tables' indexes: name, table, columns."""
    out = []
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.split("///", 1)[1])
        for table in BIG_TABLES + ("turn_locks", "retired_users"):
            for _, name, _unique, origin, _ in db.execute(f"PRAGMA index_list('{table}')").fetchall():
                columns = [row[2] for row in db.execute(f"PRAGMA index_info('{name}')").fetchall()]
                kind = {"pk": "primary key", "u": "unique", "c": "index"}[origin]
                out.append(f"  {table:<18}{name:<40}({', '.join(columns)})  {kind}")
        db.close()
    else:
        import psycopg

        with psycopg.connect(pg_dsn(url)) as db:
            tables = "('" + "','".join(BIG_TABLES + ("turn_locks", "retired_users")) + "')"
            for table, name, definition in db.execute(
                f"SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename IN {tables} ORDER BY 1, 2"  # noqa: S608
            ).fetchall():
                columns = definition.split(" USING btree ", 1)[-1]
                out.append(f"  {table:<18}{name:<40}{columns}")
    return out


# -- one database, start to end ----------------------------------------------------------------


def run_database(kind: str, args, folder: Path, fake_url: str) -> dict:
    print(f"\n== {kind} ==", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    cluster = None
    if kind == "sqlite":
        urls = {"EMPTY": sqlite_url(folder / "empty.db"), "FULL": sqlite_url(folder / "full.db")}
    else:
        from tests.pg import Cluster

        pg_folder = folder / "pg"
        pg_folder.mkdir()
        cluster = Cluster(pg_folder).start()
        urls = {}
        for label in ("EMPTY", "FULL"):
            urls[label] = cluster.create_database()
    cases = {}
    try:
        loads = {}
        for label, url in urls.items():
            make_schema(url)  # the server's own migrations
            total = args.conversations if label == "FULL" else 0
            data = batches(total, args.owners, args.messages, args.now)
            print(
                f"  loading {label}: {total:,} conversations + {len(MEASURED)} x {MEASURED_CONVERSATIONS}", flush=True
            )
            if kind == "sqlite":
                loads[label] = load_sqlite(Path(url.split("///", 1)[1]), data, report_progress(label))
            else:
                loads[label] = load_postgresql(url, data, report_progress(label))
            info = loads[label]
            print(
                f"    {label}: {info['conversations']:,} conversations, {info['messages']:,} messages, "
                f"{info['message_feedback']:,} ratings; inserted in {info['insert_s']:.0f} s "
                f"({info['messages'] / max(info['insert_s'], 1e-9):,.0f} messages/s), "
                f"{info['total_s']:.0f} s with the indexes",
                flush=True,
            )
        size = database_size(kind, urls["FULL"])
        print(f"    FULL is {size / 2**30:.1f} GiB on disk", flush=True)
        result = {"kind": kind, "loads": loads, "size": size}
        if not args.plans_only:
            for label, url in urls.items():
                cases[label] = Case(label, url, folder / f"server-{label.lower()}", fake_url)
            samples = measure(cases, args)
            lines, rows = summarise(kind, samples, args.rounds)
            result.update(table=lines, rows=rows)
            print("\n".join(lines), flush=True)
            for case in cases.values():
                case.close()
            cases = {}
        if kind == "postgresql":
            vacuum_analyze(urls["FULL"])  # what the timing added, counted in
        statements = capture_statements(urls["FULL"], fake_url, folder / "plans")
        plan_lines, flagged = explain(urls["FULL"], statements)
        result.update(plans=plan_lines, flagged=flagged, indexes=index_list(urls["FULL"]))
        header = "EXPLAIN QUERY PLAN" if kind == "sqlite" else "EXPLAIN (after VACUUM ANALYZE)"
        print(f"\n{kind}: the indexes of the big tables (FULL)")
        print("\n".join(result["indexes"]))
        print(f"\n{kind}: {header} of each operation's statements on FULL")
        print("\n".join(plan_lines))
        print(f"\n{kind}: full scans of a big table: {len(flagged) or 'none'}")
        for line in flagged:
            print("  FLAGGED", line)
        return result
    finally:
        for case in cases.values():
            with contextlib.suppress(Exception):
                case.close()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)  # the next database's run gets the disk and the page cache


def database_size(kind: str, url: str) -> int:
    if kind == "sqlite":
        path = Path(url.split("///", 1)[1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    import psycopg

    with psycopg.connect(pg_dsn(url)) as db:
        return db.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1_000_000, help="FULL's other conversations")
    parser.add_argument("--messages", type=int, default=10, help="messages per conversation")
    parser.add_argument("--owners", type=int, default=10_000, help="users owning FULL's other conversations")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--requests", type=int, default=300, help="requests per operation, database and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per operation first")
    parser.add_argument("--plans-only", action="store_true", help="load and print the query plans; no timing")
    parser.add_argument("--tmp", help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.now = time.time()
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    print(
        f"{sys.implementation.name} {sys.version.split()[0]}, {os.cpu_count()} CPUs; FULL: {args.conversations:,} "
        f"conversations over {args.owners:,} users, {args.messages} messages each; measured users: "
        f"{len(MEASURED)} x {MEASURED_CONVERSATIONS} conversations in EMPTY and FULL alike",
        flush=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="store-scale-", dir=args.tmp))
    folder.chmod(0o755)  # PostgreSQL's own user reaches its cluster's folder inside
    results = []
    try:
        fake, fake_port = start_fake(folder)
        fake_url = f"http://{HOST}:{fake_port}/v1"
        try:
            for kind in kinds:
                results.append(run_database(kind, args, folder / kind, fake_url))
        finally:
            stop(fake)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\nsummary:")
    for result in results:
        print("\n".join(result.get("table", [f"{result['kind']}: (no timing)"])))
        print(f"  full scans of a big table: {len(result['flagged']) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
