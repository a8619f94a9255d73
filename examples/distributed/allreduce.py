"""Data-parallel statistics over the torchrun contract, without torch.

Each worker takes every WORLD_SIZE-th number of 0..N-1 (its shard), computes
partial sums, and the workers add them up (an all-reduce through rank 0 at
MASTER_ADDR:MASTER_PORT). Every rank ends with the totals; rank 0 writes them
as the step's output. This is what `torch.distributed` (gloo) does for
gradients, in a few lines of standard library.
"""
import json
import os
import socket
import struct
import sys
import time

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
local_rank = int(os.environ["LOCAL_RANK"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
n = int(os.environ.get("N", "1000"))
print(f"rank {rank} of {world} (local rank {local_rank}), master {addr}:{port}", flush=True)
if os.environ.get("FAIL_RANK") == str(rank):
    print("failing on purpose", flush=True)
    sys.exit(3)

shard = [float(i) for i in range(n) if i % world == rank]
partial = [sum(shard), sum(x * x for x in shard), float(len(shard))]


def recv_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("a worker went away")
        data += chunk
    return data


def send(sock, values):
    body = struct.pack(f"<{len(values)}d", *values)
    sock.sendall(struct.pack("<I", len(body)) + body)


def recv(sock):
    size = struct.unpack("<I", recv_exact(sock, 4))[0]
    return list(struct.unpack(f"<{size // 8}d", recv_exact(sock, size)))


if rank == 0:
    server = socket.create_server((addr, port))
    peers = [server.accept()[0] for _ in range(world - 1)]
    total = partial
    for peer in peers:
        total = [a + b for a, b in zip(total, recv(peer))]
    for peer in peers:
        send(peer, total)
else:
    deadline = time.time() + 30
    while True:
        try:
            sock = socket.create_connection((addr, port))
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    send(sock, partial)
    total = recv(sock)

count = total[2]
mean = total[0] / count
std = (total[1] / count - mean * mean) ** 0.5
print(f"rank {rank}: count {count:.0f} mean {mean} std {std}", flush=True)
with open(os.path.join(os.environ["WEIR_OUTPUTS_DIR"], "stats"), "w") as f:
    json.dump({"rank": rank, "count": count, "mean": mean, "std": std}, f)
with open(os.environ["WEIR_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"key": "mean", "value": mean, "step": 0}) + "\n")
