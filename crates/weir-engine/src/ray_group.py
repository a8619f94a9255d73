"""Ranks 1..N-1 of a distributed Weir step, as one Ray placement group.

The step's runtime is rank 0: the Ray job's entrypoint, placed by one
worker's `resources:`. It runs this driver beside its own worker. The driver
reserves one bundle of those resources per other rank (a placement group,
with the step's `distributed.placement` strategy), tells the runtime where
rank 0 is, starts `weir exec-rank` in each bundle on the torchrun contract,
passes each rank's output on as "[rank R] ..." lines, and exits with the
status of the first rank that fails, after cancelling the others.

Protocol on stdout, one line each, for the runtime:
  weir-group: master IP LOCAL_WORLD_SIZE   rank 0's address; start rank 0
  weir-group: placed TEXT                  where each rank runs
  weir-group: failed RANK STATUS           the first rank that failed
  weir-group: error TEXT                   the group could not start
"""
import json
import os
import queue
import sys
import threading

# Lines of different ranks that look alike must all reach the log.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray.util.placement_group import (  # noqa: E402
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

_out = threading.Lock()


def say(line):
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@ray.remote(max_retries=0)
def run_rank(rank, argv, env):
    """Runs one rank to its end, yielding its output lines, then its status."""
    import subprocess

    child_env = dict(os.environ)
    child_env.update(env)
    proc = subprocess.Popen(
        argv,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for raw in proc.stdout:
        yield ("line", raw.decode("utf-8", "replace").rstrip("\n"))
    yield ("exit", proc.wait())


def follow(rank, generator, events):
    try:
        for ref in generator:
            events.put((rank,) + tuple(ray.get(ref)))
    except Exception as e:  # the rank's worker or node died, or it was cancelled
        events.put((rank, "lost", f"{type(e).__name__}: {e}".splitlines()[0]))


def main():
    spec = json.loads(os.environ["WEIR_GROUP_SPEC"])
    n, bundle, strategy = spec["workers"], spec["bundle"], spec["strategy"]
    # Through the raylet of the node this runs on (the runtime says which).
    joined = {"_node_ip_address": spec["node_ip"]} if spec.get("node_ip") else {}
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False, **joined)
    here = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()

    pg = placement_group([dict(bundle) for _ in range(n - 1)], strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=spec["wait_s"])
    if not ready:
        say(
            f"weir-group: error Ray could not place {n - 1} more workers of {bundle} "
            f"({strategy}) within {spec['wait_s']} s; free now: {ray.available_resources()}"
        )
        os._exit(75)
    placed = placement_group_table(pg)["bundles_to_node_id"]
    nodes = [here] + [placed[i] for i in range(n - 1)]
    ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    # torchrun's numbering: GROUP_RANK is the node's index, LOCAL_RANK the
    # rank's index on its node.
    order = list(dict.fromkeys(nodes))
    per_node, local_rank = {}, []
    for node in nodes:
        local_rank.append(per_node.get(node, 0))
        per_node[node] = per_node.get(node, 0) + 1
    say(
        "weir-group: placed "
        + ", ".join(f"rank {r} on {ips.get(node, node)}" for r, node in enumerate(nodes))
    )
    say(f"weir-group: master {ip} {per_node[here]}")

    events = queue.Queue()
    generators = {}
    for r in range(1, n):
        env = dict(spec["env"])
        env.update(
            MASTER_ADDR=ip,
            MASTER_PORT=str(spec["master_port"]),
            WORLD_SIZE=str(n),
            RANK=str(r),
            LOCAL_RANK=str(local_rank[r]),
            LOCAL_WORLD_SIZE=str(per_node[nodes[r]]),
            GROUP_RANK=str(order.index(nodes[r])),
        )
        options = {
            "num_cpus": bundle.get("CPU", 0),
            "num_gpus": bundle.get("GPU", 0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=r - 1
            ),
        }
        if "memory" in bundle:
            options["memory"] = bundle["memory"]
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            options["resources"] = custom
        argv = [spec["weir"], "exec-rank", spec["step_run_id"], "--rank", str(r)]
        generators[r] = run_rank.options(**options).remote(r, argv, env)
        threading.Thread(target=follow, args=(r, generators[r], events), daemon=True).start()

    running = set(generators)
    while running:
        rank, kind, value = events.get()
        if kind == "line":
            say(f"[rank {rank}] {value}")
            continue
        running.discard(rank)
        if kind == "exit" and value == 0:
            continue
        if kind == "lost":
            say(f"[rank {rank}] lost: {value}")
            value = 1
        # The others would wait for this rank in their next collective.
        status = min(value if value > 0 else 128 - value, 255)
        say(f"weir-group: failed {rank} {status}")
        for other in running:
            try:
                ray.cancel(generators[other], force=True)
            except Exception:
                pass
        os._exit(status)
    remove_placement_group(pg)
    os._exit(0)


if __name__ == "__main__":
    main()
