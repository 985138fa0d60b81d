"""``kill -9`` of a ``cca worker`` in the middle of a write-back: nothing lost, nothing doubled.

The service only accepts (``CCA_INTAKE_WORKERS=0``); separate ``cca worker`` processes do
the work, as when scaling out. The Zendesk stand-in applies each write and then holds its
answer, so the kill lands after the vendor changed the ticket and before the worker could
record it: the next worker must find its note at the vendor instead of writing again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cca.settings import Settings
from tests.conftest import ROOT, wait_until
from tests.integration.conftest import cli_env
from tests.integration.service_harness import rows, service
from tests.integration.test_ticketing_loop import loop_env, new_ticket, post
from tests.standins.base import Reply
from tests.standins.zendesk import ZendeskStandIn

GROUPS = {5000, 5001, 5002, 5003, 5011}


def start_worker(home, zd: ZendeskStandIn) -> subprocess.Popen:
    """A ``cca worker`` whose log goes to a file (a pipe nobody reads would block it)."""
    env = cli_env(Settings(home=home), **loop_env(zd, CCA_INTAKE_LEASE_S="3",
                                                  CCA_INTAKE_BATCH_SIZE="1"))
    log = (home / "worker.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--workers", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=log,
                            start_new_session=True)


def worker_log(home, proc=None) -> str:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
    return (home / "worker.log").read_text(errors="replace")[-3000:]


def queued(client, zd: ZendeskStandIn, subject: str, texts: list[str]) -> list[int]:
    """New tickets at the stand-in, each delivered once and stored by the service."""
    tids = [new_ticket(zd, subject, text) for text in texts]
    for tid in tids:
        accepted = post(client, zd.webhook("created", tid))
        assert accepted.status_code == 202 and accepted.json()["stored"] == 1
    return tids


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_kill_9_mid_write_loses_nothing_and_writes_nothing_twice(service_home):
    with ZendeskStandIn(groups=GROUPS) as zd, service(service_home, **loop_env(
            zd, CCA_INTAKE_WORKERS="0")) as client:
        tids = queued(client, zd, "Delivery",
                      [f"My parcel {n} is late, where is it?" for n in range(6)])
        zd.delay_after_apply = 3.0
        worker = start_worker(service_home, zd)
        try:
            # The first write is applied at the vendor; its answer is being held.
            assert wait_until(lambda: any(zd.notes(t) for t in tids), 180), \
                worker_log(service_home)
            kill9(worker)
            applied = [t for t in tids if zd.notes(t)]
            assert len(applied) == 1
            zd.delay_after_apply = 0.0
            worker = start_worker(service_home, zd)

            def done() -> bool:
                return all(r["status"] == "done" for r in rows(
                    service_home, "SELECT status FROM intake_events WHERE ticket_id = ANY(:t)",
                    t=[f"zendesk-{t}" for t in tids]))

            assert wait_until(done, 180), worker_log(service_home)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)
        assert worker.returncode == 0, worker_log(service_home)
        for tid in tids:
            assert len(zd.notes(tid)) == 1, f"ticket {tid}: {zd.notes(tid)}"
        outcomes = {r["ticket_id"]: r["outcome"] for r in rows(
            service_home, "SELECT ticket_id, outcome FROM intake_events "
            "WHERE ticket_id = ANY(:t)", t=[f"zendesk-{t}" for t in tids])}
        assert outcomes[f"zendesk-{applied[0]}"] == "found-written"
        assert sorted(outcomes.values()).count("found-written") == 1
        puts = [r for r in zd.requests if r.method == "PUT"
                and r.path.rsplit("/", 1)[-1] in {str(t) for t in tids}]
        assert len(puts) == len(tids)  # one write per ticket, the killed one included
        assert not zd.violations, zd.violations
        audited = rows(service_home, "SELECT DISTINCT ticket_id FROM decisions "
                       "WHERE ticket_id = ANY(:t)", t=[f"zendesk-{t}" for t in tids])
        assert len(audited) == len(tids)


@pytest.mark.parametrize("delay", [0.0, 0.4, 1.1])
def test_kill_9_at_other_moments_loses_nothing(service_home, delay):
    """Killed while loading, while claiming, between writes: every event still lands once."""
    with ZendeskStandIn(groups=GROUPS) as zd, service(service_home, **loop_env(
            zd, CCA_INTAKE_WORKERS="0")) as client:
        tids = queued(client, zd, "Invoice",
                      [f"Billing question number {n} about my invoice" for n in range(4)])
        zd.delay_after_apply = 0.3
        worker = start_worker(service_home, zd)
        wait_until(lambda: any(zd.notes(t) for t in tids), 180)
        wait_until(lambda: False, delay)
        kill9(worker)
        zd.delay_after_apply = 0.0
        worker = start_worker(service_home, zd)
        try:
            # Every event done, not only every note there: the killed worker's event (its
            # note written, its record not) is settled once its lease ends.
            assert wait_until(lambda: all(r["status"] == "done" for r in rows(
                service_home, "SELECT status FROM intake_events WHERE ticket_id = ANY(:t)",
                t=[f"zendesk-{t}" for t in tids])), 60), worker_log(service_home, worker)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        assert [len(zd.notes(t)) for t in tids] == [1] * len(tids)


def test_full_queue_answers_503_with_retry_after_and_stores_nothing(service_home):
    with ZendeskStandIn(groups=GROUPS) as zd, service(service_home, **loop_env(
            zd, CCA_INTAKE_WORKERS="0", CCA_INTAKE_MAX_PENDING="2")) as client:
        waiting = rows(service_home, "SELECT count(*) AS n FROM intake_events "
                       "WHERE status IN ('pending', 'processing')")[0]["n"]
        tids = [new_ticket(zd, "Card", f"Card number {n} declined") for n in range(3)]
        answers = [post(client, zd.webhook("created", t)) for t in tids]
        accepted = max(0, 2 - waiting)
        assert [a.status_code for a in answers] == [202] * accepted + [503] * (3 - accepted)
        refused = answers[-1]
        assert refused.headers["Retry-After"] == "30" and "queue is full" in refused.json()[
            "error"]
        stored = rows(service_home, "SELECT count(*) AS n FROM intake_events "
                      "WHERE ticket_id = ANY(:t)", t=[f"zendesk-{t}" for t in tids])
        assert stored[0]["n"] == accepted
    # What was accepted is delivered once workers run (and leaves no queue behind).
    with ZendeskStandIn(groups=GROUPS) as zd2, service(service_home, **loop_env(zd2)):
        for t in tids:
            zd2.add_ticket(t, "Card", "Card declined")
        assert wait_until(lambda: sum(bool(zd2.notes(t)) for t in tids) == accepted, 60)
        assert wait_until(lambda: rows(service_home, "SELECT count(*) AS n FROM intake_events "
                                       "WHERE status IN ('pending', 'processing')")[0]["n"]
                          == 0, 30)


def test_slow_write_keeps_its_lease_so_no_second_worker_writes_it_again(service_home):
    """A write waiting out a 429 for longer than the lease: the lease is renewed while the
    event is in hand, so the other worker never takes it (which would write it twice)."""
    with ZendeskStandIn(groups=GROUPS) as zd, service(service_home, **loop_env(
            zd, CCA_INTAKE_WORKERS="2", CCA_INTAKE_LEASE_S="1",
            CCA_INTAKE_BATCH_SIZE="1")) as client:
        tid = new_ticket(zd, "Card", "My card was declined at the till")
        zd.fail_next(1, Reply(429, {"error": "TooManyRequests"}, {"Retry-After": "3"}),
                     path_pattern=rf"/api/v2/tickets/{tid}$")
        assert post(client, zd.webhook("created", tid)).json()["stored"] == 1
        assert wait_until(lambda: zd.notes(tid), 30)
        time.sleep(2)
        # (Events other tests left queued may reach this stand-in too: only this ticket's.)
        puts = [r for r in zd.requests if r.method == "PUT" and r.path.endswith(f"/{tid}")]
        assert len(puts) == 2 and len(zd.notes(tid)) == 1  # the 429, then one write
        (event,) = rows(service_home, "SELECT attempts, outcome FROM intake_events "
                        "WHERE ticket_id = :t", t=f"zendesk-{tid}")
        assert event["attempts"] == 1 and event["outcome"] in ("routed", "review")
