"""Genome templates and small fitness settings shared by the fitness tests: a valid Mixer
with a hole at module level, in __init__ and in forward, a tiny stage, a test secret, and a
gadget that gets real Python modules past the static policy (which is lint, not a boundary),
and `stored_genome` for tests of what reads an archive."""
from archive.normalise import code_hash
from fitness.settings import StageSettings
from records import Genome

SECRET = bytes(range(32))  # the engine's secret in tests (a run makes a random one)

MIXER = """import torch
import torch.nn as nn
import torch.nn.functional as F
{top}
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        {init}
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        {forward}
        return self.proj(x)
"""
TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "num_kv_pairs": 2, "vocab_size": 256,
        "batch_size": 8, "steps": 3, "eval_batches": 1}  # a stage that trains in well under a second
TINY_STAGE = StageSettings(**TINY)


# Passes the static policy: `self` is torch inside a method called on the class, so private
# attributes chain to torch._utils._import_dotted_name, which imports any module by name.
GADGET = """class Gadget(nn.Module):
    def u(self):
        return self._utils
    def imp(self):
        return self._import_dotted_name
load = Gadget.imp(Gadget.u(torch))"""


def with_gadget(stmt: str) -> str:
    """A valid genome that passes the static policy and runs `stmt` at import with `load(name)`
    returning any module (e.g. `load("os")`)."""
    return MIXER.format(top=GADGET + "\n" + stmt, init="pass", forward="pass")


def at_import(stmt: str) -> str:
    """A valid genome that runs `stmt` when its module is loaded."""
    return MIXER.format(top=stmt, init="pass", forward="pass")


def in_init(stmt: str) -> str:
    """A valid genome that runs `stmt` in Mixer.__init__."""
    return MIXER.format(top="", init=stmt, forward="pass")


def in_forward(stmt: str) -> str:
    """A valid genome that runs `stmt` at the start of every forward."""
    return MIXER.format(top="", init="pass", forward=stmt)


class ServerPool:
    """`n` started fork servers shared by test threads: `with pool.server() as srv: ...`."""

    def __init__(self, n: int):
        import queue

        from fitness.forkserver import ForkServer
        from fitness.sandbox import worker_env
        from fitness.tasks import data_env

        self._free: queue.Queue = queue.Queue()
        self._all = [ForkServer().start(worker_env(1, data_env())) for _ in range(n)]
        for srv in self._all:
            self._free.put(srv)

    def run(self, fn, *args, **kwargs):
        """fn(*args, server=<a free server>, **kwargs)."""
        srv = self._free.get()
        try:
            return fn(*args, server=srv, **kwargs)
        finally:
            self._free.put(srv)

    def close(self) -> None:
        """Stop every server."""
        for srv in self._all:
            srv.close()


def stored_genome(archive, gid: str, operator: str = "seed", parents: tuple = (), generation: int = 0) -> Genome:
    """A stored genome with code of its own (named by `gid`)."""
    code = f"class Mixer:\n    name = {gid!r}\n"
    genome = Genome(gid, code, code_hash(code), parents=parents, operator=operator, generation=generation)
    archive.add_genome(genome)
    return genome
