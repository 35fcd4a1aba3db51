"""The learner's process group listens on its node's address only: with 2 ranks (gloo + DeepSpeed, as the
learner joins them), every listening socket of both rank processes is on MASTER_ADDR (127.0.0.1 here),
the rendezvous store included (torch's own env:// store listens on `[::]`). ~10 s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import torch

from cocoedit.loopback import free_port
from tests.learner import common


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from cocoedit.learner.learner import _init_distributed

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    _init_distributed(torch.device("cpu"), rank, 2)
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the group works: 1 + 2
    # ::ffff:127.0.0.1 is 127.0.0.1 (IPv4-mapped), e.g. the socket of a Ray a forked rank inherited
    listening = [
        [c.laddr.ip.removeprefix("::ffff:"), c.laddr.port]
        for c in psutil.Process().net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"sum": total.item(), "listening": listening}))
    dist.barrier()  # both ranks looked while the other was still in the group
    dist.destroy_process_group()


def test_two_ranks_listen_on_the_node_address_only(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    port = free_port()
    method = "spawn" if dist.is_available() and dist.is_initialized() else "fork"
    ctx = mp.start_processes(
        _rank_main, args=(port, str(tmp_path)), nprocs=2, join=False, start_method=method
    )
    try:
        deadline = time.monotonic() + 300
        while not ctx.join(timeout=2):
            assert time.monotonic() < deadline, "the two ranks did not form a group in 300 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        common.remove_shm_files(port)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]
    assert ["127.0.0.1", port] in ranks[0]["listening"]  # rank 0 serves the rendezvous
    for r in ranks:
        assert r["listening"] and all(ip == "127.0.0.1" for ip, _ in r["listening"]), ranks
