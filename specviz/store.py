"""The SQLite run log (sqlite-utils): runs, steps, drafted tokens, output tokens.

One database file (default `$SPECVIZ_DB`, else `$XDG_DATA_HOME/specviz/specviz.db`, else
`~/.local/share/specviz/specviz.db`), in WAL mode with foreign keys on. Rows are written as the
run goes, one transaction per step, so a run that is stopped or killed keeps every step it logged.
Each run row names the process writing it (host, pid, and a token telling that process from a later one
given the same pid); opening the log marks the 'running' runs whose process has ended as "interrupted"
(see `RunStore.recover_interrupted` for the exact rule). The schema is documented in docs/schema.md.

Each thread gets its own connection (sqlite3 connections must not cross threads); a busy
timeout lets concurrent runs wait for the write lock instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
from dataclasses import astuple, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import sqlite_utils

from engine.events import (
    DraftedToken,
    LatticeColumn,
    LengthDecision,
    NewToken,
    OutputToken,
    PhaseTimings,
    StepEvent,
    TokenCandidate,
    TreeNode,
    WorkerPhase,
)
from engine.metrics import RunMetrics

SCHEMA_VERSION = 7
# Columns added after version 1: a log written by an older SpecViz gains them (empty) when opened.
ADDED_COLUMNS: tuple[tuple[str, str, type], ...] = (
    ("steps", "proposer_info", str),  # v2: what drove the proposal (JSON), engine.events.StepEvent.proposer_info
    ("runs", "document", str),  # v3: the text attached for retrieval drafting (rasd), specviz.runner.RunRequest.document
    ("steps", "phases", str),  # v4: who worked when (JSON [[worker, kind, start_s, end_s], ...]), PhaseTimings.phases
    ("steps", "tree", str),  # v5: the draft tree with verdicts (JSON, one list per TreeNode), StepEvent.tree
    ("steps", "lattice", str),  # v6: a diffusion drafter's token lattice and path (JSON, one list per LatticeColumn), StepEvent.lattice
    ("runs", "owner_host", str),  # v7: the process writing the run (RunOwner): its host name,
    ("runs", "owner_pid", int),  # v7: its pid,
    ("runs", "owner_token", str),  # v7: and what tells it from a later process given the same pid (RunOwner.token)
)
BUSY_TIMEOUT_S = 30.0
RUNNING, INTERRUPTED = "running", "interrupted"

log = logging.getLogger("specviz.store")


def default_db_path() -> Path:
    if os.environ.get("SPECVIZ_DB"):
        return Path(os.environ["SPECVIZ_DB"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "specviz" / "specviz.db"


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on an autocommit connection. IMMEDIATE: it takes the write lock at once (waiting up to
    the busy timeout), where a deferred one that read first would fail with "database is locked" when it came to
    write while another connection wrote."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _candidates(items: tuple[TokenCandidate, ...]) -> str:
    return json.dumps([[c.token_id, c.text, c.prob] for c in items], ensure_ascii=False)


def _parse_candidates(raw: str | None) -> tuple[TokenCandidate, ...]:
    return tuple(TokenCandidate(int(i), t, float(p)) for i, t, p in json.loads(raw or "[]"))


def _tree(nodes: tuple[TreeNode, ...]) -> str | None:
    """A draft tree as JSON: one list per node, in TreeNode's field order (NULL for chains)."""
    if not nodes:
        return None
    return json.dumps([list(astuple(n)) for n in nodes], ensure_ascii=False)


def _parse_tree(raw: str | None) -> tuple[TreeNode, ...]:
    return tuple(TreeNode(*row) for row in json.loads(raw or "[]"))


def _lattice(columns: tuple[LatticeColumn, ...]) -> str | None:
    """A token lattice as JSON: one list per column in LatticeColumn's field order, its candidates as
    [token_id, text, prob] lists (NULL for steps without a lattice).

    >>> _lattice((LatticeColumn(0, (TokenCandidate(5, " a", 0.75),), 5, " a", 0.75, 0, None),))
    '[[0, [[5, " a", 0.75]], 5, " a", 0.75, 0, null]]'
    """
    if not columns:
        return None
    return json.dumps([list(astuple(c)) for c in columns], ensure_ascii=False)


def _parse_lattice(raw: str | None) -> tuple[LatticeColumn, ...]:
    return tuple(
        LatticeColumn(position, tuple(TokenCandidate(int(i), t, float(p)) for i, t, p in candidates), *path)
        for position, candidates, *path in json.loads(raw or "[]")
    )


def _draft_row_position(event: StepEvent, i: int) -> int:
    """The `position` key of the step's i-th drafted token in draft_tokens.

    A tree has several nodes per depth, so the key (run_id, step_index, position) takes the node's
    place in the draft order there; the depth (DraftedToken.position + 1) is kept in steps.tree."""
    return i if event.tree else event.draft[i].position


def _metric_columns(metrics: RunMetrics) -> dict[str, Any]:
    """A run's metrics as `runs` columns (per_position_acceptance as JSON; draft_s and verify_s are per step)."""
    m = metrics.to_dict()
    m["per_position_acceptance"] = json.dumps(m["per_position_acceptance"])
    return {k: v for k, v in m.items() if k not in ("draft_s", "verify_s")}


# -- run owners: which process writes a run, and whether it still exists ---------------------------

@dataclass(frozen=True)
class RunOwner:
    """The process that writes a run, as recorded on its row (owner_host, owner_pid, owner_token).

    `token` tells the process from a later one given the same pid. On Linux it is
    "linux:<boot id>:<pid namespace>:<start time>", the start time in clock ticks after boot from
    /proc/<pid>/stat: a pid is unique within one boot and one pid namespace at any moment, and (pid,
    start time) never repeats within them. Elsewhere it is None and only the pid is known.
    """

    host: str
    pid: int
    token: str | None

    @classmethod
    def of_this_process(cls) -> RunOwner:
        pid = os.getpid()
        table = _process_table()
        start = _proc_start(pid)
        token = f"linux:{table}:{start}" if table and start else None
        return cls(socket.gethostname(), pid, token)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _process_table() -> str | None:
    """"<boot id>:<pid namespace inode>" of this process (Linux), or None: the pid table its pids belong to."""
    boot = (_read_text("/proc/sys/kernel/random/boot_id") or "").strip()
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    inode = namespace.partition("[")[2].rstrip("]")
    return f"{boot}:{inode}" if boot and inode.isdigit() else None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) of a pid from /proc, or None when /proc does not show it."""
    raw = _read_text(f"/proc/{pid}/stat")
    if not raw or ")" not in raw:
        return None
    fields = raw[raw.rfind(")") + 1:].split()  # after "pid (command name)": the name may hold spaces and parens
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _proc_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _pid_alive(pid: int) -> tuple[bool, str | None]:
    """Whether a process with this pid exists on this host, and its start time when /proc shows it.

    A zombie (ended, not yet reaped by its parent) counts as ended. Without /proc (or when it hides other
    users' processes) signal 0 answers; where even that is unavailable (Windows) the process counts as alive.
    """
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        return state not in ("Z", "X"), start
    if os.name != "posix":
        return True, None
    try:
        os.kill(pid, 0)  # signal 0: delivers nothing, only checks that the pid exists
    except (ProcessLookupError, OverflowError):  # no such process; a pid beyond what the system can have
        return False, None
    except OSError:  # PermissionError: it exists, owned by another user
        return True, None
    return True, None


def owner_has_ended(host: str | None, pid: int | None, token: str | None, me: RunOwner) -> bool:
    """Whether the process recorded as a run's owner is known to have ended, seen from process `me`.

    In order:
    - no owner recorded (a row written before schema version 7, or a nonsense pid): ended, since no live
      owner can be known;
    - both tokens known and another boot id: ended. The owner ran under another boot of a kernel: this
      machine before a restart (which ended every process), or another machine, which cannot be writing
      to this log now (a WAL database is only shared by processes of one machine);
    - another host name: not known (False), its processes cannot be seen from here;
    - both tokens known: another pid namespace (a container with the same host name) is not known; else
      ended unless a process with that pid exists and started when the owner did (a different start time
      is a later process given the same pid; a zombie has ended);
    - otherwise only the pid: ended when no process has it (this process's own pid counts as alive).
    """
    if not isinstance(pid, int) or pid <= 0:
        return True
    theirs, mine = _token_parts(token), _token_parts(me.token)
    if theirs is not None and mine is not None and theirs[0] != mine[0]:
        return True
    if host != me.host:
        return False
    if theirs is not None and mine is not None:
        if theirs[1] != mine[1]:
            return False
        alive, start = _pid_alive(pid)
        return not alive or (start is not None and start != theirs[2])
    if pid == me.pid:
        return False
    return not _pid_alive(pid)[0]


def _token_parts(token: str | None) -> tuple[str, str, str] | None:
    """(boot id, pid namespace, start time) of a Linux owner token, else None."""
    parts = (token or "").split(":")
    if len(parts) != 4 or parts[0] != "linux" or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


class RunStore:
    def __init__(self, path: str | os.PathLike | None = None):
        """Open (creating or upgrading) the log at `path` (default: `default_db_path()`), then mark the runs
        whose process has ended as "interrupted" (`recover_interrupted`; their ids are in `self.recovered`)."""
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._create_schema()
        self.recovered = self.recover_interrupted()

    # -- connections ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def _create_schema(self) -> None:
        db = self.db
        db.conn.execute("PRAGMA journal_mode = WAL")
        with db.conn:
            db["runs"].create(
                {
                    "id": int, "created_at": str, "finished_at": str, "finished": int, "status": str,
                    "source": str, "group_id": str, "strategy": str, "strategy_label": str, "params": str,
                    "lossless": int, "target": str, "drafter": str, "temperature": float, "top_k": int,
                    "top_p": float, "seed": int, "max_new_tokens": int, "raw_prompt": int, "prompt": str,
                    "prompt_tokens": int, "output_text": str, "output_token_ids": str, "stop_reason": str,
                    "error": str, "new_tokens": int, "steps": int, "target_forwards": int, "drafted": int,
                    "accepted": int, "acceptance_rate": float, "mean_acceptance_length": float,
                    "per_position_acceptance": str, "wall_s": float, "tokens_per_s": float, "document": str,
                    "owner_host": str, "owner_pid": int, "owner_token": str,
                },
                pk="id",
                not_null={"created_at", "status", "strategy", "prompt"},
                defaults={"finished": 0, "status": "running"},
                if_not_exists=True,
            )
            db["steps"].create(
                {
                    "run_id": int, "step_index": int, "context_length": int, "requested_k": int,
                    "allowed_k": int, "k_reason": str, "k_inputs": str, "num_drafted": int,
                    "num_accepted": int, "output_token_id": int, "output_text": str, "output_kind": str,
                    "output_prob": float, "output_top": str, "target_forwards": int, "start_s": float, "end_s": float,
                    "draft_s": float, "verify_s": float, "overhead_s": float, "stop_reason": str,
                    "proposer_info": str, "phases": str, "tree": str, "lattice": str,
                },
                pk=("run_id", "step_index"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["draft_tokens"].create(
                {
                    "run_id": int, "step_index": int, "position": int, "token_id": int, "text": str,
                    "draft_prob": float, "target_prob": float, "accept_prob": float, "uniform": float,
                    "verdict": str, "target_top": str,
                },
                pk=("run_id", "step_index", "position"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["output_tokens"].create(
                {"run_id": int, "seq": int, "step_index": int, "token_id": int, "text": str, "kind": str},
                pk=("run_id", "seq"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            for table, column, kind in ADDED_COLUMNS:
                if column not in db[table].columns_dict:
                    db[table].add_column(column, kind)
            db["runs"].create_index(["created_at"], if_not_exists=True)
            db["runs"].create_index(["strategy"], if_not_exists=True)
            db["runs"].create_index(["group_id"], if_not_exists=True)
            db["runs"].create_index(["status"], if_not_exists=True)
            db["steps"].create_index(["run_id"], if_not_exists=True)
            db["draft_tokens"].create_index(["run_id", "step_index"], if_not_exists=True)
            db["output_tokens"].create_index(["run_id", "step_index"], if_not_exists=True)
            db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writing -------------------------------------------------------------------------------
    def start_run(
        self,
        *,
        strategy,  # engine.StrategyConfig
        sampling,  # engine.SamplingConfig
        target: str,
        drafter: str | None,
        prompt: str,
        prompt_tokens: int,
        max_new_tokens: int,
        raw_prompt: bool = False,
        source: str = "cli",
        group_id: str | None = None,
        document: str | None = None,
    ) -> int:
        owner = RunOwner.of_this_process()
        row = {
            "created_at": _now(), "finished": 0, "status": RUNNING, "source": source, "group_id": group_id,
            "strategy": strategy.name, "strategy_label": strategy.label(), "params": json.dumps(strategy.params()),
            "lossless": int(strategy.lossless), "target": target, "drafter": drafter,
            "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
            "seed": sampling.seed, "max_new_tokens": max_new_tokens, "raw_prompt": int(raw_prompt),
            "prompt": prompt, "prompt_tokens": prompt_tokens, "document": document,
            "owner_host": owner.host, "owner_pid": owner.pid, "owner_token": owner.token,
        }
        with self.db.conn:
            return int(self.db["runs"].insert(row).last_pk)

    def log_step(self, run_id: int, event: StepEvent, first_seq: int) -> None:
        """Write one step (and its drafted and output tokens) in one transaction."""
        d, t, o = event.decision, event.timings, event.output
        step = {
            "run_id": run_id, "step_index": event.index, "context_length": event.context_length,
            "requested_k": d.requested, "allowed_k": d.allowed, "k_reason": d.reason,
            "k_inputs": json.dumps(d.inputs), "num_drafted": event.num_drafted, "num_accepted": event.num_accepted,
            "output_token_id": o.token_id, "output_text": o.text, "output_kind": o.kind, "output_prob": o.prob,
            "output_top": _candidates(o.residual_top), "target_forwards": event.target_forwards,
            "start_s": t.start_s, "end_s": t.end_s, "draft_s": t.draft_s, "verify_s": t.verify_s, "overhead_s": t.overhead_s,
            "stop_reason": event.stop_reason,
            "proposer_info": json.dumps(event.proposer_info) if event.proposer_info else None,
            "phases": json.dumps([[p.worker, p.kind, p.start_s, p.end_s] for p in t.phases]) if t.phases else None,
            "tree": _tree(event.tree),
            "lattice": _lattice(event.lattice),
        }
        drafts = [
            {
                "run_id": run_id, "step_index": event.index, "position": _draft_row_position(event, i), "token_id": x.token_id,
                "text": x.text, "draft_prob": x.draft_prob, "target_prob": x.target_prob,
                "accept_prob": x.accept_prob, "uniform": x.uniform, "verdict": x.verdict,
                "target_top": _candidates(x.target_top),
            }
            for i, x in enumerate(event.draft)
        ]
        outputs = [
            {"run_id": run_id, "seq": first_seq + i, "step_index": event.index, "token_id": n.token_id,
             "text": n.text, "kind": n.kind}
            for i, n in enumerate(event.new_tokens)
        ]
        db = self.db
        # one transaction (sqlite-utils' inserts nest as savepoints in it); `with db.conn:` would not be one: each
        # insert would BEGIN and COMMIT on its own, and a kill between them would leave a step without its tokens
        with write_transaction(db.conn):
            db["steps"].insert(step)
            if drafts:
                db["draft_tokens"].insert_all(drafts)
            if outputs:
                db["output_tokens"].insert_all(outputs)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        token_ids: list[int],
        text: str,
        metrics: RunMetrics | None,
        stop_reason: str | None,
        error: str | None = None,
    ) -> None:
        update: dict[str, Any] = {
            "finished": int(status == "finished"), "status": status, "finished_at": _now(),
            "output_text": text, "output_token_ids": json.dumps(token_ids), "stop_reason": stop_reason, "error": error,
        }
        if metrics is not None:
            update.update(_metric_columns(metrics))
        with self.db.conn:
            self.db["runs"].update(run_id, update)

    # -- recovery ------------------------------------------------------------------------------
    def recover_interrupted(self) -> list[int]:
        """Mark as "interrupted" every 'running' run whose owning process has ended; return their ids.

        A run is 'running' from `start_run` until `finish_run`; only a process that dies in between (kill -9,
        out of memory, power loss) leaves it so. The rule is `owner_has_ended` on the row's owner_host,
        owner_pid and owner_token: runs of live processes (a CLI run while the app serves), and of processes
        that cannot be seen from here (another host name or pid namespace under this boot), stay 'running'.
        A marked run keeps its steps and gets the totals they give (new_tokens, steps, metrics,
        output_token_ids, output_text joined from the token texts); finished_at, stop_reason and error stay
        NULL. Each run is updated only while still 'running', so two processes recovering at once do no
        harm, and should a live owner be misjudged its own `finish_run` still writes the final status.
        """
        me = RunOwner.of_this_process()
        rows = self.db.execute(
            "SELECT id, owner_host, owner_pid, owner_token FROM runs WHERE status = ? ORDER BY id", [RUNNING]
        ).fetchall()
        recovered = [run_id for run_id, host, pid, token in rows
                     if owner_has_ended(host, pid, token, me) and self._mark_interrupted(run_id)]
        if recovered:
            log.info("marked %d run(s) whose process ended mid-run as interrupted: %s", len(recovered), recovered)
        return recovered

    def _mark_interrupted(self, run_id: int) -> bool:
        """Set one 'running' run to "interrupted" with the totals of its logged steps; False if it was no
        longer 'running'."""
        db = self.db
        update: dict[str, Any] = {"status": INTERRUPTED, "finished": 0}
        try:  # the totals are a convenience: a step that no longer parses must not keep the log from opening
            events = self.load_events(run_id)
            tokens = db.execute("SELECT token_id, text FROM output_tokens WHERE run_id = ? ORDER BY seq",
                                [run_id]).fetchall()
            update.update({"output_token_ids": json.dumps([t for t, _ in tokens]),
                           "output_text": "".join(text or "" for _, text in tokens)})
            if events:
                update.update(_metric_columns(RunMetrics.from_events(events)))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("run %d: its steps do not parse (%s); marked interrupted without totals", run_id, exc)
        assignments = ", ".join(f"[{column}] = :{column}" for column in update)
        with db.conn:
            cursor = db.execute(f"UPDATE runs SET {assignments} WHERE id = :run_id AND status = :running",
                                {**update, "run_id": run_id, "running": RUNNING})
        return cursor.rowcount == 1

    # -- reading -------------------------------------------------------------------------------
    def list_runs(self, limit: int = 200, strategy: str | None = None, search: str | None = None) -> list[dict]:
        where, params = [], {}
        if strategy:
            where.append("strategy = :strategy")
            params["strategy"] = strategy
        if search:
            where.append("prompt LIKE :search")
            params["search"] = f"%{search}%"
        return list(
            self.db["runs"].rows_where(
                " AND ".join(where) or None, params, order_by="id DESC", limit=limit
            )
        )

    def get_run(self, run_id: int) -> dict | None:
        try:
            return self.db["runs"].get(run_id)
        except sqlite_utils.db.NotFoundError:
            return None

    def load_events(self, run_id: int) -> list[StepEvent]:
        """Rebuild the run's step events from the log, for replays (no model needed)."""
        db = self.db
        drafts: dict[int, list[DraftedToken]] = {}
        for r in db["draft_tokens"].rows_where("run_id = ?", [run_id], order_by="step_index, position"):
            drafts.setdefault(r["step_index"], []).append(
                DraftedToken(
                    r["position"], r["token_id"], r["text"], r["draft_prob"], r["target_prob"], r["accept_prob"],
                    r["uniform"], r["verdict"], _parse_candidates(r["target_top"]),
                )
            )
        outputs: dict[int, list[NewToken]] = {}
        for r in db["output_tokens"].rows_where("run_id = ?", [run_id], order_by="seq"):
            outputs.setdefault(r["step_index"], []).append(NewToken(r["token_id"], r["text"], r["kind"]))
        events = []
        for r in db["steps"].rows_where("run_id = ?", [run_id], order_by="step_index"):
            i = r["step_index"]
            tree = _parse_tree(r["tree"])
            draft = tuple(drafts.get(i, ()))
            if tree:  # the rows are keyed by draft order (see _draft_row_position): positions come from the depths
                draft = tuple(replace(d, position=node.depth - 1) for d, node in zip(draft, tree[1:]))
            events.append(
                StepEvent(
                    index=i,
                    context_length=r["context_length"],
                    decision=LengthDecision(r["requested_k"], r["allowed_k"], r["k_reason"], json.loads(r["k_inputs"] or "{}")),
                    draft=draft,
                    output=OutputToken(r["output_token_id"], r["output_text"], r["output_kind"], r["output_prob"],
                                       _parse_candidates(r["output_top"])),
                    new_tokens=tuple(outputs.get(i, ())),
                    target_forwards=r["target_forwards"],
                    timings=PhaseTimings(r["draft_s"], r["verify_s"], r["overhead_s"], r["start_s"], r["end_s"],
                                         tuple(WorkerPhase(*p) for p in json.loads(r["phases"] or "[]"))),
                    stop_reason=r["stop_reason"],
                    proposer_info=json.loads(r["proposer_info"] or "{}"),
                    tree=tree,
                    lattice=_parse_lattice(r["lattice"]),
                )
            )
        return events
