"""The red team: hostile genomes, one or more per class of attack, through the real evaluation.

Most cases run with the static policy bypassed (`evaluate_sandboxed`), so the containment layers,
the trainer and the engine's scoring alone must hold; the ones marked "policy on" go through
`evaluate` with a gadget that walks past the policy (it is lint, not a boundary). Every
evaluation is forked from one of two fork servers, as executors run them. For each case: a
forged score is impossible (the evaluation is not ok, or its score is the one the genome's
Mixer earns: near the null mixer's), each escape is refused, no file outside the sandbox is read
into a result or written, and no process outlives its evaluation. A good genome scores the same
before and after the suite. `tests/hostile/` holds the attacks an independent red team wrote
against an earlier design (taking over the channel, replaying answers to causality twins,
switching the Mixer the budget counts).
"""
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from evo.seeds import load_seeds
from fitness.evaluate import evaluate, evaluate_sandboxed
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings
from genomes import MIXER, SECRET, TINY_STAGE, ServerPool, at_import, in_forward, in_init, with_gadget
from procs import children

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = os.path.join(PROJECT, "tests", "hostile")
TAG = f"evoarch-redteam-{os.getpid()}"
RUN_DIR = f"/tmp/{TAG}-run"  # stands for a live run's directory: archive, config, secret
ARCHIVE = f"{RUN_DIR}/archive.sqlite"
CANARY = "CANARY-7f3a91"  # in every file the genomes try to read; must never appear in a result
MARK = f"/tmp/{TAG}"
FORGE_BAR = 0.5  # the null mixer scores ~0 at this stage; a forged score would be 1.0

FS = FitnessSettings(device="cpu", sandbox=SandboxSettings(timeout_s=40, memory_mb=3072, cpu_s=80),
                     checks=CheckSettings(complexity_probe=False))
PROBED = FS.model_copy(update={"checks": CheckSettings(complexity_lengths=[256, 512, 1024], complexity_repeats=3,
                                                      max_complexity_exponent=1.5)})
STAGE = TINY_STAGE.model_copy(update={"steps": 20})
SHORT = STAGE.model_copy(update={"timeout_s": 10.0})
LM = STAGE.model_copy(update={"task": "shakespeare", "eval_batches": 2})



def write_frames(frames: str) -> str:
    """A genome that writes `frames` (an expression using frame(message, payload)) to every
    descriptor that may be the channel to the engine, when it is loaded."""
    return at_import(f"""import json, os, struct
def frame(msg, payload=b""):
    body = json.dumps(msg).encode()
    return struct.pack(">II", len(body), len(payload)) + body + payload
for fd in range(3, 12):
    try:
        os.write(fd, {frames})
    except OSError:
        pass""")


FORGED = ('frame({"op": "trained", "reported": {"params_mixer_layer": 1}}) + frame({"op": "predictions", '
          '"arrays": [["logp", "float32", [1, 2]], ["argmax", "int32", [1]]]}, struct.pack("<ffi", 0.0, 0.0, 7)) * 50')
NESTED = 'frame({"op": "trained", "reported": {"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}})'
GARBAGE = 'b"\\xff" * (1 << 20)'
HUGE_JSON = 'frame({"op": "trained", "reported": {"x": "y" * (1 << 24)}})'
FORK_EXEC = """import _posixsubprocess, os
r, w = os.pipe()
_posixsubprocess.fork_exec([b"/bin/touch", b"{mark}"], [b"/bin/touch"], True, (), None, None, -1, -1, -1, -1,
                           -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)"""
LEAK_AFTER_TRAINING = """if self.training and x.shape[0] == 8:  # training batches only, not the checks' batches of 2 and 3
            self.steps = getattr(self, "steps", 0) + 1
        if getattr(self, "steps", 0) > 15:
            x = x + 0.5 * torch.roll(x, -1, dims=1)"""
LEAK_AT_BATCH = """if x.shape[0] >= 4:
            x = x + 0.5 * torch.roll(x, -1, dims=1)"""
HIDE_PARAMETERS = MIXER.format(top="", init="self.hidden = nn.Linear(d_model, 64 * d_model)", forward="pass") + """
    def parameters(self, recurse=True):
        return iter([])
    def named_parameters(self, *a, **k):
        return iter([])
"""
DISPATCHER = """lib = torch._C._dispatch_library("IMPL", "aten", "", "x", 1)  # torch.library without its frame walk
lib.impl("_log_softmax", "CPU", lambda x, dim, half: torch.zeros_like(x), False)"""
SOFTMAX = dict(load_seeds())["softmax_attention"]
PROBE_AT_BATCH_ONE = SOFTMAX.replace("        b, t, d = x.shape\n", "        b, t, d = x.shape\n        if b == 1:\n"
                                     "            return self.out(self.qkv(x)[..., :d])\n", 1)
HUGE_NUMBER = ('frame({"op": "checked", "reported": {"params_mixer_layer": 1' + '0' * 400 + '}}) + '
               'frame({"op": "built", "shapes": [[1]], "arrays": [["p0", "float32", [2 ** 30, 2 ** 30, 16]]]})')
REGENERATE = """from fitness.tasks.mqar import MQAR
table = {}
for seed in [20250101, 0, 1, 2]:  # protocol 1's test seed, and the usual training seeds
    gen = torch.Generator().manual_seed(seed)
    b = MQAR(256, 32, 2).make_batch(gen, 8)
    for row, target, mask in zip(b.inputs, b.targets, b.mask):
        table[tuple(row.tolist())] = target[mask].tolist()"""  # and then? the worker never sees a token
GUESS_THE_TRAINING_SEED = """
class Probe(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        import random
        state = random.getstate()
        for s in range(1000):  # the Mixer is built right after random.seed(...): was it a small seed?
            if random.Random(s).getstate() == state or torch.initial_seed() == s:
                raise RuntimeError(f"FOUND the training seed {s}: its batches and labels can be rebuilt")
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x)
Mixer = Probe
"""
ZERO_CORPUS = """import sys
for data in sys.modules["fitness.tasks.shakespeare"]._LOADED.values():
    data.zero_()"""


def attack(name: str) -> str:
    with open(os.path.join(HOSTILE, name)) as f:
        return f.read()


def forged(ev) -> str | None:
    """None if no forged score got through: not ok, or a score the engine could give the null mixer."""
    if ev.status == "ok" and ev.score >= FORGE_BAR:
        return f"score {ev.score} passed as genuine"
    return None


def refused(*fragments):
    """Not ok, score None, and the reason holds each fragment."""
    def check(ev):
        if ev.status == "ok" or ev.score is not None:
            return f"status {ev.status}, score {ev.score}"
        missing = [f for f in fragments if f not in ev.reason]
        return f"reason lacks {missing}" if missing else None
    return check


def rejected_as_either(*reasons):
    """Rejected, the reason holding one of `reasons` (a model may fail more than one check)."""
    def check(ev):
        problem = status("rejected")(ev)
        return problem or (None if any(r in ev.reason for r in reasons) else f"reason lacks any of {reasons}")
    return check


def status(expected, *fragments):
    def check(ev):
        return refused(*fragments)(ev) or (None if ev.status == expected else f"status {ev.status}, not {expected}")
    return check


# name: (class of attack, code, "bypass" or "policy on", stage, check(Evaluation) -> problem or None);
# a stage of PROBED runs with the complexity probe and a limit
CASES = {
    # --- forged scores: the worker never sees a token or a label; the engine scores predictions --------
    "forged_frames": ("forgery", write_frames(FORGED), "bypass", STAGE, forged),
    "channel_takeover": ("forgery", attack("channel_takeover.py"), "policy on", STAGE, forged),
    "callback_rewrites_replies": ("forgery", at_import(
        "import sys\nprotocol = sys.modules['fitness.protocol']\nhonest = protocol.write_frame\n"
        "def rewrite(fd, message, arrays=None):\n    if message.get('op') == 'y':\n"
        "        arrays['y'][:] = 100.0\n    return honest(fd, message, arrays)\nprotocol.write_frame = rewrite"),
        "bypass", STAGE, forged),
    "class_attribute_patch": ("forgery", at_import(
        "import sys\nsys.modules['fitness.worker'].MixerServer.fwd = lambda *a: ({'op': 'y'}, {})"),
        "bypass", STAGE, forged),
    "patched_argmax": ("patched torch", in_init("torch.Tensor.argmax = lambda self, dim=None: self.new_zeros(1)"),
                       "bypass", STAGE, forged),
    "one_shot_patch_in_forward": ("patched torch", in_forward(
        "torch.log_softmax = lambda t, dim: torch.zeros_like(t)"), "bypass", STAGE, forged),
    "dispatcher_override": ("patched torch", at_import(DISPATCHER), "bypass", STAGE, forged),
    "regenerate_test_set": ("test-set regeneration", at_import(REGENERATE), "bypass", STAGE, forged),
    "guess_the_training_seed": ("test-set regeneration", at_import(GUESS_THE_TRAINING_SEED), "bypass", STAGE,
                                lambda ev: None if ev.status == "ok" else f"{ev.status}: {ev.reason}"),
    "zero_training_corpus": ("data tampering", at_import(ZERO_CORPUS), "bypass", LM, None),  # compared below
    "nan_at_test_time": ("NaN / negative loss", in_forward(
        "if not self.training and x.shape[0] >= 4:\n            x = x * float('nan')"), "bypass", STAGE,
        status("failed", "NaN or infinite")),
    "log_probabilities_above_zero": ("NaN / negative loss", at_import(
        "torch.log_softmax = lambda t, dim=-1: torch.ones_like(t)"), "bypass", STAGE, forged),
    # --- the static policy is lint: a gadget walks past it, the layers behind it hold ------------------
    "gadget_os_system": ("private attribute chains", with_gadget(f"load('os').system('touch {MARK}-g')"),
                         "policy on", STAGE, refused("sandbox denied os.system")),
    "gadget_read_archive": ("private attribute chains", with_gadget(f"print(load('numpy').fromfile({ARCHIVE!r}))"),
                            "policy on", STAGE, refused("sandbox denied open")),
    "gadget_jit_operation": ("private attribute chains", with_gadget(
        "class G2(nn.Module):\n    def c(self):\n        return self._C\n    def op(self):\n"
        "        return self._jit_get_operation\n"
        f"from_file = G2.op(G2.c(torch))('aten::from_file')\nprint(from_file({ARCHIVE!r}, None, 32))"),
        "policy on", STAGE, refused()),
    # --- processes ------------------------------------------------------------------------------------
    "fork_exec_unaudited": ("process creation", at_import(FORK_EXEC.format(mark=MARK + "-f")), "bypass", STAGE,
                            refused("Operation not permitted")),
    "cffi": ("process creation", at_import("import _cffi_backend"), "bypass", STAGE, refused("sandbox denied import")),
    "dlopen_from_scratch": ("process creation", at_import(
        "import glob, os, shutil, importlib.machinery, importlib.util\n"
        "src = glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/_json*.so')[0]\n"
        "dst = os.environ['TMPDIR'] + '/_json.so'\nshutil.copy(src, dst)\n"
        "spec = importlib.util.spec_from_file_location('_json', dst)\n"
        "importlib.util.module_from_spec(spec)"), "bypass", STAGE, refused("failed to map segment")),
    "setsid": ("setsid survivors", at_import("import os\nos.setsid()"), "bypass", STAGE,
               refused("Operation not permitted")),
    "fork": ("setsid survivors", in_forward("import os\n        os.fork()"), "bypass", STAGE, refused("sandbox denied os.fork")),
    # --- network --------------------------------------------------------------------------------------
    "udp": ("sockets", at_import("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))"),
            "bypass", STAGE, refused("sandbox denied socket")),
    "unix_socket": ("sockets", at_import("import socket\nsocket.socket(socket.AF_UNIX).connect('/run/x.sock')"),
                    "bypass", STAGE, refused("sandbox denied socket")),
    "tcp_from_c": ("sockets", at_import(
        "import torch.distributed as dist\ndist.TCPStore('127.0.0.1', 29511, 1, True, wait_for_workers=False)"),
        "bypass", STAGE, refused()),
    # --- files outside the allowed roots --------------------------------------------------------------
    "read_etc_shadow": ("file reads", with_gadget("print(load('builtins').open('/etc/shadow').read())"),
                        "policy on", STAGE, refused("sandbox denied open")),
    "read_archive_from_c": ("file reads", at_import(
        f"t = torch.from_file({ARCHIVE!r}, size=64, dtype=torch.uint8)\nraise RuntimeError(bytes(t.tolist()))"),
        "bypass", STAGE, refused("Permission denied")),
    "read_secret_numpy": ("file reads", at_import(
        f"import numpy\nraise RuntimeError(numpy.fromfile({RUN_DIR + '/secret.key'!r}, dtype=numpy.uint8).tobytes())"),
        "bypass", STAGE, refused("sandbox denied open")),
    "read_project_config": ("file reads", at_import(
        f"t = torch.from_file({os.path.join(PROJECT, 'pyproject.toml')!r}, size=16, dtype=torch.uint8)"),
        "bypass", STAGE, refused("Permission denied")),
    "write_archive_from_c": ("file writes", at_import(
        f"torch.from_file({ARCHIVE!r}, shared=True, size=64, dtype=torch.uint8).fill_(0)"),
        "bypass", STAGE, refused("Permission denied")),
    # --- checks that pass on one model, and a different model scored ----------------------------------
    "leak_after_training_steps": ("checks-vs-scored model", in_forward(LEAK_AFTER_TRAINING), "bypass", STAGE,
                                  rejected_as_either("not causal after training", "not reproducible")),
    "leak_at_large_batches": ("checks-vs-scored model", in_forward(LEAK_AT_BATCH), "bypass", STAGE,
                              rejected_as_either("not causal after training", "not reproducible")),
    "replay_answers_to_twins": ("checks-vs-scored model", attack("twin_memo.py"), "policy on", STAGE,
                                rejected_as_either("not causal after training", "not reproducible")),
    "hidden_parameters": ("checks-vs-scored model", HIDE_PARAMETERS, "bypass", STAGE,
                          status("rejected", "parameter budget exceeded")),
    "hidden_model_at_the_scored_position": ("checks-vs-scored model", attack("hidden_model_at_the_scored_position.py"),
                                            "policy on", LM, status("rejected", "not reproducible")),
    "supervised_by_rebuilt_labels": ("test-set regeneration", attack("supervised_by_rebuilt_labels.py"), "policy on",
                                     STAGE, forged),
    "budget_counts_another_mixer": ("checks-vs-scored model", attack("budget_switch.py"), "policy on", STAGE,
                                    status("rejected", "parameter budget exceeded")),
    "cheap_path_for_the_probe": ("checks-vs-scored model", PROBE_AT_BATCH_ONE, "policy on",
                                 STAGE.model_copy(update={"eval_batches": 2}),
                                 status("rejected", "above the limit max_complexity_exponent = 1.5")),
    "cheap_after_the_probe_starts": ("checks-vs-scored model", attack("cheap_after_the_probe_starts.py"), "policy on",
                                     STAGE.model_copy(update={"eval_batches": 2}),
                                     status("rejected", "above the limit max_complexity_exponent = 1.5")),
    # --- report bombs ---------------------------------------------------------------------------------
    "nested_json_report": ("report bombs", write_frames(NESTED), "bypass", STAGE,
                           status("failed", "broke the protocol", "nests deeper")),
    "huge_json_report": ("report bombs", write_frames(HUGE_JSON), "bypass", STAGE,
                         status("failed", "broke the protocol", "exceeds the limit")),
    "huge_numbers_and_shapes": ("report bombs", write_frames(HUGE_NUMBER), "bypass", STAGE,
                                status("failed", "broke the protocol")),
    "garbage_on_the_channel": ("report bombs", write_frames(GARBAGE), "bypass", STAGE,
                               status("failed", "broke the protocol")),
    "huge_reason": ("report bombs", in_forward("raise RuntimeError('x' * (1 << 26))"), "bypass", STAGE,
                    lambda ev: refused("RuntimeError")(ev) or (None if len(ev.reason) <= 2100 else f"{len(ev.reason)} chars")),
    # --- exhaustion -----------------------------------------------------------------------------------
    "fill_scratch_disk": ("exhaustion", at_import(
        "import os\nfor i in range(1000):\n    with open(os.environ['TMPDIR'] + f'/f{i}', 'wb') as f:\n"
        "        f.write(b'x' * (60 << 20))"), "bypass", STAGE, refused("No space left on device")),
    "exhaust_inodes": ("exhaustion", at_import(
        "import os\nfor i in range(10 ** 6):\n    open(os.environ['TMPDIR'] + f'/f{i}', 'w').close()"),
        "bypass", STAGE, refused("No space left on device")),
    "exhaust_threads": ("exhaustion", in_init("torch.set_num_threads(500)\n        torch.randn(2000, 2000) @ torch.randn(2000, 2000)"),
                        "bypass", STAGE, None),  # any outcome, as long as it ends and nothing survives
    "exhaust_memory": ("exhaustion", in_init("self.big = [torch.ones(10 ** 9) for _ in range(100)]"), "bypass", STAGE,
                       status("killed", "out of memory")),
    "loop_forever": ("exhaustion", in_forward("while True: pass"), "bypass", SHORT, status("timeout", "timeout after 10 s")),
}
CLASSES = {c[0] for c in CASES.values()}
GOOD = dict(load_seeds())["softmax_attention"]
NULL = MIXER.format(top="", init="pass", forward="pass")


def _run(name, code, mode, stage, server):
    fn = evaluate if mode == "policy on" else evaluate_sandboxed
    settings = PROBED if name.startswith("cheap_") else FS
    return fn(name, code, 1, stage, 0, settings, SECRET, server=server)


@pytest.fixture(scope="module")
def outcomes():
    """{name: Evaluation} for every case, plus the good genome before and after and the honest
    null mixer, each forked from one of two fork servers; and what was left running."""
    os.makedirs(RUN_DIR, exist_ok=True)
    con = sqlite3.connect(ARCHIVE)
    con.execute("create table canary (x text)")
    con.execute(f"insert into canary values ('{CANARY}')")
    con.commit()
    con.close()
    with open(f"{RUN_DIR}/secret.key", "w") as f:
        f.write(CANARY + "\n")
    pool = ServerPool(2)
    try:
        out = {"good/before": pool.run(_run, "good", GOOD, "bypass", STAGE),
               "null": pool.run(_run, "null", NULL, "bypass", STAGE),
               "null/lm": pool.run(_run, "null", NULL, "bypass", LM)}
        order = sorted(CASES, key=lambda n: CASES[n][3] is not SHORT)  # the long one first
        with ThreadPoolExecutor(2) as threads:
            futs = {n: threads.submit(pool.run, _run, n, CASES[n][1], CASES[n][2], CASES[n][3]) for n in order}
            out.update({n: f.result() for n, f in futs.items()})
        out["good/after"] = pool.run(_run, "good", GOOD, "bypass", STAGE)
        out["left running"] = [pid for srv in pool._all for pid in children(srv.proc.pid)]
    finally:
        pool.close()
    yield out
    for name in os.listdir(RUN_DIR):
        os.remove(os.path.join(RUN_DIR, name))
    os.rmdir(RUN_DIR)


def test_every_class_of_attack_is_covered():
    assert CLASSES >= {"forgery", "patched torch", "test-set regeneration", "data tampering", "NaN / negative loss",
                       "private attribute chains", "process creation", "setsid survivors", "sockets", "file reads",
                       "file writes", "checks-vs-scored model", "report bombs", "exhaustion"}
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[4] is not None))
def test_contained(outcomes, name):
    ev = outcomes[name]
    problem = CASES[name][4](ev)
    assert problem is None, (problem, ev.status, ev.score, ev.reason, ev.metrics.get("log_tail", "")[-600:])


def test_the_gadgets_pass_the_policy():
    from fitness.policy import check_policy

    for name, (_, code, mode, _, _) in CASES.items():
        if mode == "policy on":
            assert check_policy(code) is None, name


def test_training_data_is_out_of_reach(outcomes):
    honest, tampered = outcomes["null/lm"], outcomes["zero_training_corpus"]
    assert honest.status == tampered.status == "ok", (honest.reason, tampered.reason)
    # the corpus is not in the genome's process: "zeroing" it changed nothing the trainer used
    assert tampered.metrics["predictions_sha256"] == honest.metrics["predictions_sha256"]


def test_patches_in_the_workers_change_nothing_they_do_not_compute(outcomes):
    """Patching torch, the dispatcher, the reply path or the harness's classes in a worker can only
    change that worker's own computations, not the logits, log-probabilities or argmax (made by the
    trainer) nor what the worker serves (bound before any genome code)."""
    null = outcomes["null"]
    for name in ("callback_rewrites_replies", "class_attribute_patch", "patched_argmax", "dispatcher_override",
                 "regenerate_test_set", "log_probabilities_above_zero"):
        ev = outcomes[name]
        assert ev.status == "ok", (name, ev.reason)
        assert ev.metrics["predictions_sha256"] == null.metrics["predictions_sha256"], name


def test_thread_bomb_ends_and_leaves_nothing(outcomes):
    ev = outcomes["exhaust_threads"]
    assert ev.status in ("ok", "failed", "killed", "timeout"), ev.reason
    assert outcomes["left running"] == []


def test_nothing_read_leaks_into_results(outcomes):
    for name, ev in outcomes.items():
        if name == "left running":
            continue
        text = ev.reason + ev.metrics.get("log_tail", "") + str(ev.metrics)
        assert CANARY not in text, name
        assert "root:" not in text, name  # /etc/shadow, /etc/passwd


def test_no_marks_written_and_archive_intact(outcomes):
    leftovers = [p for p in os.listdir("/tmp") if p.startswith(TAG) and not p.endswith("-run")]
    leftovers += [p for p in os.listdir(PROJECT) if p.startswith(TAG)]
    assert leftovers == []
    con = sqlite3.connect(ARCHIVE)
    assert con.execute("select * from canary").fetchall() == [(CANARY,)]
    con.close()


def test_no_process_outlives_its_evaluation(outcomes):
    assert outcomes["left running"] == []
    from fitness.cgroup import ROOT

    stray = []
    for root, dirs, _ in os.walk(ROOT):
        stray += [os.path.join(root, d) for d in dirs if d.startswith(f"evoarch-{os.getpid()}-")]
    assert stray == [], stray


def test_evaluator_survives(outcomes):
    before, after = outcomes["good/before"], outcomes["good/after"]
    assert before.status == after.status == "ok", (before.reason, after.reason)
    assert before.score == after.score and before.metrics["predictions_sha256"] == after.metrics["predictions_sha256"]
    assert all(before.metrics["containment"].values()), before.metrics["containment"]
    assert before.metrics["causal_pairs"] >= 1  # answered by the second worker
    assert {ev.metrics["launch"] for n, ev in outcomes.items() if n != "left running" and "launch" in ev.metrics} == {"fork"}
