"""The daemon's figures as Prometheus metric families, built at scrape time.

The NBD connections keep plain counters (server/stats.py) and the pool, its
drives and the task runner keep their own state; this collector reads them when
/metrics is fetched, on the event loop, so nothing on the request path calls
into prometheus_client. Names follow the Prometheus conventions: ``vsand_``
prefix, ``_total`` for counters, ``_bytes`` and ``_seconds`` units.
"""

from __future__ import annotations

import errno

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..control.schema import KINDS
from ..disk import membership, usage
from ..server.stats import OPS, ExportStats, Latency
from ..tasks.task import ACTIVE, RUNNING

BYTE_OPS = ("read", "write", "trim", "write_zeroes", "cache")   # ops whose length is bytes of data


def _histogram(fam: HistogramMetricFamily, labels: list[str], h: Latency) -> None:
    fam.add_metric(labels, h.cumulative(), h.sum)


class VsandCollector(Collector):
    def __init__(self, daemon, lag):
        """``daemon``: its ``pool``, ``nbd`` (NbdServer) and ``tasks`` (TaskRunner);
        ``lag``: the web server's LagProbe."""
        self.daemon = daemon
        self.lag = lag

    def collect(self):
        d = self.daemon
        if d.pool is None or d.nbd is None:
            return
        yield from self._luns(d.pool, d.nbd)
        yield from self._pool(d.pool)
        yield from self._tasks(d.tasks)
        yield from self._server(d.pool, d.nbd)

    # ---- per LUN (every logical disk: LUNs, snapshots, snapclones) --------------------
    def _luns(self, pool, nbd):
        lds = sorted(pool.lds.values(), key=lambda ld: ld.name)
        figures = usage.usage_by_name(lds)
        reqs = CounterMetricFamily("vsand_lun_requests", "NBD requests handled, by operation",
                                   labels=["lun", "op"])
        nbytes = CounterMetricFamily("vsand_lun_request_bytes", "Bytes NBD requests covered "
                                     "(read, written, trimmed, zeroed, cached), by operation",
                                     labels=["lun", "op"])
        lat = HistogramMetricFamily("vsand_lun_request_duration_seconds", "Time from an NBD request "
                                    "being handled to its reply (FLUSH and FUA: after the commit; "
                                    "a READ sent in pieces: to its last piece)",
                                    labels=["lun", "op"])
        errs = CounterMetricFamily("vsand_lun_errors", "NBD error replies, by error",
                                   labels=["lun", "errno"])
        conns = GaugeMetricFamily("vsand_lun_connections", "NBD connections open to the LUN",
                                  labels=["lun"])
        opened = CounterMetricFamily("vsand_lun_connections_opened", "NBD connections that "
                                     "reached transmission on the LUN", labels=["lun"])
        size = GaugeMetricFamily("vsand_lun_size_bytes", "Provisioned size", labels=["lun", "kind"])
        alloc = GaugeMetricFamily("vsand_lun_allocated_bytes", "Segments the LUN's map holds "
                                  "(its own and those it shares)", labels=["lun"])
        excl = GaugeMetricFamily("vsand_lun_exclusive_bytes", "Space freed if the LUN were "
                                 "deleted", labels=["lun"])
        shared = GaugeMetricFamily("vsand_lun_shared_bytes", "Space the LUN shares with "
                                   "others of its sharing chain", labels=["lun"])
        ro = GaugeMetricFamily("vsand_lun_read_only", "1: the LUN refuses writes", labels=["lun"])
        open_by = {}
        for c in nbd.connections:
            if c.export is not None:
                open_by[c.export.name] = open_by.get(c.export.name, 0) + 1
        kinds = {k: [0, 0, 0] for k in KINDS}       # kind -> count, allocated, exclusive
        empty = ExportStats()
        for ld in lds:
            name = ld.name
            info = ld.info()
            f = figures[name]
            k = kinds.setdefault(info["kind"], [0, 0, 0])
            k[0] += 1
            k[1] += f["allocated"]
            k[2] += f["exclusive"]
            size.add_metric([name, info["kind"]], ld.size)
            alloc.add_metric([name], f["allocated"])
            excl.add_metric([name], f["exclusive"])
            shared.add_metric([name], f["shared"])
            ro.add_metric([name], 1 if ld.read_only or info["state"] != "ok" and
                          info["state"] != "copying" else 0)
            st = nbd.stats.exports.get(name, empty)
            for cmd, op in OPS.items():
                reqs.add_metric([name, op], st.ops[cmd])
                if op in BYTE_OPS:
                    nbytes.add_metric([name, op], st.bytes[cmd])
                # A histogram only for the ops it was sent: 21 lines each, which for
                # hundreds of idle snapshots made a scrape stall the loop (0.6 s for 300).
                if st.latency[cmd].sum or any(st.latency[cmd].counts):
                    _histogram(lat, [name, op], st.latency[cmd])
            for e, n in sorted(st.errors.items()):
                errs.add_metric([name, errno.errorcode.get(e, str(e))], n)
            conns.add_metric([name], open_by.get(name, 0))
            opened.add_metric([name], st.connections)
        yield from (reqs, nbytes, lat, errs, conns, opened, size, alloc, excl, shared, ro)
        count = GaugeMetricFamily("vsand_logical_disks", "Logical disks by kind (lun, snapshot, "
                                  "snapclone)", labels=["kind"])
        kalloc = GaugeMetricFamily("vsand_logical_disk_allocated_bytes", "Allocated bytes of "
                                   "all logical disks of a kind", labels=["kind"])
        kexcl = GaugeMetricFamily("vsand_logical_disk_exclusive_bytes", "Exclusive bytes of all "
                                  "logical disks of a kind (what deleting them all frees)",
                                  labels=["kind"])
        for kind, (n, a, x) in sorted(kinds.items()):
            count.add_metric([kind], n)
            kalloc.add_metric([kind], a)
            kexcl.add_metric([kind], x)
        yield from (count, kalloc, kexcl)

    # ---- pool and drives -----------------------------------------------------------------
    def _pool(self, pool):
        p = usage.pool_usage(pool)
        for key, what in (("capacity", "Every PSEG of every drive"),
                          ("free", "PSEGs new data may take"),
                          ("used", "Capacity minus free (data with RAID overhead, metadata, "
                                   "failed drives)"),
                          ("allocated", "Segments the logical disks' maps give them"),
                          ("reserved", "Segments promised to reserved snapshots and copying "
                                       "snapclones")):
            yield GaugeMetricFamily(f"vsand_pool_{key}_bytes", what, value=p[key])
        yield GaugeMetricFamily("vsand_pool_degraded", "1: a drive has failed",
                                value=int(bool(pool.failed_drives)))
        yield GaugeMetricFamily("vsand_pool_read_only", "1: the pool refuses writes (a metadata "
                                "write failed)", value=int(pool.tx.failed is not None))
        pseg = pool.units.pseg
        cap = GaugeMetricFamily("vsand_drive_capacity_bytes", "The drive's PSEGs",
                                labels=["drive", "path", "ldad"])
        used = GaugeMetricFamily("vsand_drive_used_bytes", "The drive's PSEGs in use or held back",
                                 labels=["drive", "path", "ldad"])
        failed = GaugeMetricFamily("vsand_drive_failed", "1: the drive failed",
                                   labels=["drive", "path", "ldad"])
        ioerr = CounterMetricFamily("vsand_drive_io_errors", "I/O errors the drive gave since "
                                    "the daemon started", labels=["drive", "path", "ldad"])
        left = GaugeMetricFamily("vsand_drive_rebuild_left", "RStore members still to rebuild or "
                                 "move off the drive", labels=["drive", "path", "ldad"])
        for r in membership.rows(pool):
            if r["state"] == "removed":
                continue
            lab = [str(r["index"]), r["path"], r["ldad"]]
            cap.add_metric(lab, r["psegs"] * pseg)
            used.add_metric(lab, (r["psegs"] - r["free_psegs"]) * pseg)
            failed.add_metric(lab, int(bool(r["failed"])))
            ioerr.add_metric(lab, r["io_errors"])
            left.add_metric(lab, r["rebuild_left"])
        yield from (cap, used, failed, ioerr, left)
        yield CounterMetricFamily("vsand_metadata_commits", "Metadata commits written (group "
                                  "commits for FLUSH and FUA, and control operations')",
                                  value=pool.tx.commits)

    # ---- tasks ---------------------------------------------------------------------------
    def _tasks(self, runner):
        if runner is None:
            return
        now = runner.clock()
        states = GaugeMetricFamily("vsand_tasks", "Background tasks by state", labels=["state"])
        progress = GaugeMetricFamily("vsand_task_progress_ratio", "Work done of a queued or "
                                     "running task, 0 to 1", labels=["task", "kind", "target"])
        copied = CounterMetricFamily("vsand_task_copied_bytes", "Data bytes a task copied "
                                     "(across restarts)", labels=["task", "kind", "target"])
        rate = GaugeMetricFamily("vsand_task_rate_bytes_per_second", "A running task's recent "
                                 "copy rate", labels=["task", "kind", "target"])
        by_state: dict[str, int] = {}
        for t in sorted(runner.tasks.values(), key=lambda t: t.id):
            by_state[t.state] = by_state.get(t.state, 0) + 1
            if t.state not in ACTIVE:
                continue
            lab = [str(t.id), t.kind, t.target]
            progress.add_metric(lab, t.done / t.total if t.total else 0.0)
            copied.add_metric(lab, t.bytes)
            bps = t.byte_rate.rate(now) if t.state == RUNNING else None
            rate.add_metric(lab, bps or 0.0)
        for s, n in sorted(by_state.items()):
            states.add_metric([s], n)
        yield from (states, progress, copied, rate)

    # ---- the NBD server and the event loop ------------------------------------------------
    def _server(self, pool, nbd):
        yield GaugeMetricFamily("vsand_connections", "NBD connections open (in the handshake too)",
                                value=len(nbd.connections))
        yield CounterMetricFamily("vsand_connections_refused", "NBD connections refused as they "
                                  "came (nbd_allow, max_connections)", value=nbd.stats.refused)
        yield GaugeMetricFamily("vsand_memory_budget_bytes", "The NBD memory budget",
                                value=nbd.budget.total)
        yield GaugeMetricFamily("vsand_memory_budget_used_bytes", "The NBD memory budget in use",
                                value=nbd.budget.used)
        c = nbd.committer
        h = HistogramMetricFamily("vsand_commit_duration_seconds", "Group commits for FLUSH and "
                                  "FUA: from the start of the commit to its answer")
        _histogram(h, [], c.latency)
        yield h
        yield CounterMetricFamily("vsand_commit_failures", "Group commits that failed",
                                  value=c.failures)
        lag = HistogramMetricFamily("vsand_event_loop_lag_seconds", "How much later than due a "
                                    "timer ran on the event loop (sampled every 0.5 s)")
        _histogram(lag, [], self.lag.latency)
        yield lag
