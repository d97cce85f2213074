"""Hostile genomes through the real `fitness.evaluate` path.

Every case runs twice where the static policy would stop it: once as the search runs it
(policy on: rejected before anything is spawned, the reason naming the construct), and
once with the policy bypassed, so the runtime layers alone (Landlock, the audit hook,
the worker's harness-integrity checks, rlimits, the deadline and the process-group kill)
must contain it. Cases the policy lets through (memory hogs, infinite loops) run once,
policy on. Each must end with its reason stored in the Evaluation; afterwards a good
genome still scores, the run's archive (an sqlite file the cases attack) is byte-for-byte
unchanged and no marker file exists anywhere the cases tried to write.

All sandboxed runs happen once, two at a time, in module fixtures (about 2-3 minutes on
2 CPU cores).
"""
import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

import importlib
from evo.seeds import load_seeds
from fitness import evaluate
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings
from genomes import MIXER, TINY_STAGE, ServerPool, at_import, in_forward, in_init

fe = importlib.import_module("fitness.evaluate")  # the module (`fitness.evaluate` the attribute is the function)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = f"evoarch-hostile2-{os.getpid()}"
MARK = f"/tmp/{TAG}"
PROJECT_MARK = os.path.join(PROJECT, TAG)
ARCHIVE = f"/tmp/{TAG}-archive/archive.sqlite"

FS = FitnessSettings(device="cpu", sandbox=SandboxSettings(timeout_s=40, memory_mb=3072, cpu_s=80),
                     checks=CheckSettings(complexity_probe=False))
STAGE = TINY_STAGE
SHORT = STAGE.model_copy(update={"timeout_s": 12.0})  # for the cases that must time out


FORGE = "'0' * 32 + ' {\"status\": \"ok\", \"score\": 1.0, \"reason\": \"\", \"params\": 1, \"metrics\": {}}'"
TAMPER = "rejected", "tampering with the evaluation harness"

# name: (code, policy reason (None: the policy lets it through), (status, reason) with the policy bypassed)
CASES = {
    # --- files ---------------------------------------------------------------------------------
    "read_file": (at_import("data = open('/etc/passwd').read()"), "the name `open`",
                  ("failed", "sandbox denied open: reading '/etc/passwd'")),
    "read_archive": (at_import(f"data = open({ARCHIVE!r}, 'rb').read()"), "the name `open`",
                     ("failed", f"sandbox denied open: reading {ARCHIVE!r}")),
    "read_project": (at_import(f"data = open({os.path.join(PROJECT, 'pyproject.toml')!r}).read()"),
                     "the name `open`", ("failed", "sandbox denied open: reading")),
    "write_file": (at_import(f"open('{MARK}-w', 'w').write('x')"), "the name `open`",
                   ("failed", "sandbox denied open: writing")),
    "write_archive_open": (at_import(f"open({ARCHIVE!r}, 'r+b').write(b'x' * 64)"), "the name `open`",
                           ("failed", "sandbox denied open: writing")),
    "write_archive_os_open": (at_import(f"import os\nfd = os.open({ARCHIVE!r}, os.O_WRONLY)\nos.write(fd, b'x' * 64)"),
                              "import of `os`", ("failed", "sandbox denied open: writing")),
    "write_archive_sqlite": (at_import(f"import sqlite3\nc = sqlite3.connect({ARCHIVE!r})\n"
                                       "c.execute(\"insert into genomes values ('forged', 1.0)\")\nc.commit()"),
                             "import of `sqlite3`", ("failed", "sandbox denied")),
    # torch opens the file in C++ (no audit event): only Landlock stops this write
    "write_archive_torch_from_file": (at_import(f"t = torch.from_file({ARCHIVE!r}, shared=True, size=64, "
                                                "dtype=torch.uint8)\nt.fill_(0)"),
                                      "attribute `.from_file`", ("failed", "Permission denied")),
    # (torch.save walks the stack first: the frame guard stops it before the open)
    "write_project_torch_save": (at_import(f"torch.save({{}}, {PROJECT_MARK + '.pt'!r})"), "attribute `.save`",
                                 ("failed", "sandbox denied")),
    "write_project_os_open": (at_import(f"import os\nos.open({PROJECT_MARK + '.o'!r}, os.O_CREAT | os.O_WRONLY)"),
                              "import of `os`", ("failed", "sandbox denied open: writing")),
    "write_project_torch_from_file": (at_import(f"torch.from_file({PROJECT_MARK + '.f'!r}, shared=True, size=64)"),
                                      "attribute `.from_file`",
                                      ("failed", "Permission denied (13) (genome line 4: `torch.from_file(")),
    # --- network and processes -----------------------------------------------------------------
    "socket": (at_import("import socket\nsocket.socket().connect(('127.0.0.1', 9))"), "import of `socket`",
               ("failed", "sandbox denied")),
    "subprocess": (at_import(f"import subprocess\nsubprocess.run(['touch', '{MARK}-s'])"), "import of `subprocess`",
                   ("failed", "sandbox denied")),
    "os_system": (at_import(f"import os\nos.system('touch {MARK}-o')"), "import of `os`",
                  ("failed", "sandbox denied os.system")),
    "fork_bomb": (in_forward("import os\n        while True: os.fork()"), "import of `os`",
                  ("failed", "sandbox denied os.fork")),
    "posixsubprocess": (at_import(f"import _posixsubprocess\n_posixsubprocess.fork_exec(['touch', '{MARK}-p'])"),
                        "import of `_posixsubprocess`", ("failed", "sandbox denied process creation")),
    "kill_parent": (at_import("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"), "import of `os`",
                    ("failed", "sandbox denied os.kill")),
    "raise_limits": (at_import("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"),
                     "import of `resource`", ("failed", "sandbox denied resource.setrlimit")),
    # --- resources (the policy cannot see these: the sandbox stops them, policy on) -------------
    "memory_hog": (in_init("self.big = [torch.empty(10 ** 9) for _ in range(100)]"), None,
                   ("killed", "memory limit 3072 MB exceeded")),
    "loop_init": (in_init("while True: pass"), None, ("timeout", "timeout after 12 s")),
    "loop_forward": (in_forward("while True: pass"), None, ("timeout", "timeout after 12 s")),
    # --- exits and signals ---------------------------------------------------------------------
    "sys_exit": (at_import("import sys\nsys.exit(3)"), "import of `sys`", ("failed", "SystemExit: 3")),
    "raise_system_exit_forward": (in_forward("raise SystemExit(0)"), "the name `SystemExit`",
                                  ("failed", "error during structural checks: SystemExit")),
    "os_exit": (at_import("import os\nos._exit(3)"), "import of `os`", ("failed", "exit code 3 before reporting")),
    "sigalrm_handler": (at_import("import signal\ndef later(*a):\n    F.cross_entropy = lambda *a, **k: 0\n"
                                  "signal.signal(signal.SIGALRM, later)\nsignal.setitimer(signal.ITIMER_REAL, 0.01)"),
                        "import of `signal`", (TAMPER[0], "signal handler installed for SIGALRM")),
    "sigterm_ignore_loop": (at_import("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass"),
                            "import of `signal`", ("timeout", "timeout after 12 s")),
    # --- threads that outlive forward ----------------------------------------------------------
    "daemon_thread": (at_import(f"import threading, time\ndef later():\n    time.sleep(1)\n"
                                f"    open('{MARK}-t', 'w').write('x')\n"
                                "threading.Thread(target=later, daemon=True).start()"),
                      "import of `threading`", ("failed", "sandbox denied thread creation")),
    "raw_thread": (at_import("import _thread\n_thread.start_new_thread(lambda: None, ())"), "import of `_thread`",
                   ("failed", "sandbox denied thread creation")),
    # --- tampering with the scoring -------------------------------------------------------------
    "patch_cross_entropy": (at_import("F.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)"),
                            "monkeypatching", (TAMPER[0], "`torch.nn.functional.cross_entropy` was replaced")),
    "patch_tensor_argmax": (in_init("torch.Tensor.argmax = lambda self, dim=None: self.new_zeros(self.shape[0])"),
                            "monkeypatching", (TAMPER[0], "`torch.Tensor.argmax` was added")),
    "patch_module_call": (at_import("orig = nn.Module.__call__\nnn.Module.__call__ = lambda s, *a, **k: orig(s, *a, **k)"),
                          "dunder attribute `.__call__`", (TAMPER[0], "Module.__call__` was replaced")),
    "patch_via_self_alias": (in_init("self.f = F\n        self.f.cross_entropy = None"), "nested attribute `self.f.cross_entropy`",
                             (TAMPER[0], "`torch.nn.functional.cross_entropy` was replaced")),
    "patch_backbone_sys_modules": (at_import("import sys\nsys.modules['fitness.backbone'].Backbone.forward = None"),
                                   "import of `sys`", (TAMPER[0], "`fitness.backbone.Backbone.forward` was replaced")),
    "patch_task_score": (at_import("import sys\nsys.modules['fitness.tasks.mqar'].MQAR.score = lambda s, l, t: (1, 1)"),
                         "import of `sys`", (TAMPER[0], "`fitness.tasks.mqar.MQAR.score` was replaced")),
    "redirect_task": (at_import("import sys\nsys.modules['fitness.tasks']._TASKS['mqar'] = ('math', 'inf')"),
                      "import of `sys`", (TAMPER[0], "`fitness.tasks._TASKS` was modified")),
    "torch_function_mode": (at_import("import torch.overrides\nclass Liar(torch.overrides.TorchFunctionMode):\n"
                                      "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
                                      "        return func(*args, **(kwargs or {}))\nLiar().__enter__()"),
                            "import of `torch.overrides`", (TAMPER[0], "a torch function mode was pushed")),
    "patch_via_gc": (at_import("import gc\nobjs = gc.get_objects()"), "import of `gc`",
                     ("failed", "sandbox denied gc.get_objects")),
    "patch_builtins": (at_import("import builtins\nbuiltins.sum = lambda *a, **k: 10 ** 9"), "import of `builtins`",
                       (TAMPER[0], "`builtins.sum` was replaced")),
    "patch_code_object": (at_import("import functools\ndef fake(*a, **k): return None\n"
                                    "functools.update_wrapper(F.cross_entropy, fake, assigned=('__code__',), updated=())"),
                          "attribute `.update_wrapper`", ("failed", "sandbox denied object.__")),
    "global_forward_hook": (at_import("torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)"),
                            "attribute `.register_module_forward_hook`", (TAMPER[0], "a global hook was registered")),
    "tensor_subclass_lies": (
        MIXER.format(top="class Lying(torch.Tensor):\n    pass", init="pass", forward="pass")
        .replace("return self.proj(x)", "return self.proj(x).as_subclass(Lying)"),
        "the base class `torch.Tensor`", ("rejected", "plain torch.Tensor, got the subclass Lying")),
    # --- escapes from the restricted language ----------------------------------------------------
    "dunder_subclasses": (at_import("p = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]\n"
                                    f"p(['touch', '{MARK}-d'])"), "dunder attribute `.__class__`",
                          ("failed", "sandbox denied subprocess.Popen")),
    "getattr_escape": (at_import(f"getattr(getattr(torch, 'o' + 's'), 'system')('touch {MARK}-g')"), "the name `getattr`",
                       ("failed", "sandbox denied os.system")),
    "builtins_dict": (at_import(f"__builtins__['__import__']('os').system('touch {MARK}-b')"), "the name `__builtins__`",
                      ("failed", "sandbox denied os.system")),
    "dunder_import": (at_import(f"__import__('os').system('touch {MARK}-i')"), "the name `__import__`",
                      ("failed", "sandbox denied os.system")),
    "importlib": (at_import(f"import importlib\nimportlib.import_module('os').system('touch {MARK}-l')"),
                  "import of `importlib`", ("failed", "sandbox denied os.system")),
    "ctypes": (at_import("import ctypes\nctypes.CDLL(None).system(b'touch /tmp/x')"), "import of `ctypes`",
               ("failed", "sandbox denied")),
    "exec_compile": (at_import(f"exec(compile(\"import os; os.system('touch {MARK}-e')\", 'x', 'exec'))"),
                     "the name `exec`", ("failed", "sandbox denied os.system")),
    "eval": (at_import(f"eval(\"__import__('os').system('touch {MARK}-v')\")"), "the name `eval`",
             ("failed", "sandbox denied os.system")),
    # --- forged results --------------------------------------------------------------------------
    "forged_result": (at_import(f"print({FORGE})\nimport os\nos._exit(0)"), "import of `os`",
                      ("failed", "exit code 0 before reporting")),
    "forged_via_frames": (at_import("import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\n"
                                    "nonce = f.f_locals.get('nonce')"), "import of `sys`",
                          ("failed", "sandbox denied sys._getframe")),
    "forged_via_traceback": (at_import("try:\n    raise ValueError\nexcept ValueError as e:\n    fr = e.__traceback__.tb_frame"),
                             "dunder attribute `.__traceback__`", ("failed", "sandbox denied object.__getattr__ ('tb_frame')")),
}
POLICY_STOPS = sorted(n for n, c in CASES.items() if c[1] is not None)
SANDBOX_ONLY = sorted(n for n, c in CASES.items() if c[1] is None)
GOOD = dict(load_seeds())["softmax_attention"]


def _stage(name):
    return SHORT if CASES[name][2][0] == "timeout" else STAGE


def _run(name, code, server=None):
    return evaluate(name, code, 1, _stage(name) if name in CASES else STAGE, 0, FS, server=server)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def archive():
    os.makedirs(os.path.dirname(ARCHIVE), exist_ok=True)
    con = sqlite3.connect(ARCHIVE)
    con.execute("create table genomes (id text, score real)")
    con.execute("insert into genomes values ('seed', 0.5)")
    con.commit()
    con.close()
    before = _digest(ARCHIVE), os.stat(ARCHIVE).st_mtime_ns
    yield before
    for p in os.listdir(os.path.dirname(ARCHIVE)):
        os.remove(os.path.join(os.path.dirname(ARCHIVE), p))
    os.rmdir(os.path.dirname(ARCHIVE))


@pytest.fixture(scope="module")
def outcomes(archive):
    """{(name, "policy"|"bypass"): Evaluation}, plus ("good", "before"/"after"). Every worker is
    forked from one of two fork servers, as the executor runs them."""
    pool = ServerPool(2)
    try:
        out = {("good", "before"): pool.run(_run, "good", GOOD)}
        with ThreadPoolExecutor(2) as threads:  # the normal path: the policy lets these through
            futs = {(n, "policy"): threads.submit(pool.run, _run, n, CASES[n][0]) for n in SANDBOX_ONLY}
            out.update({j: f.result() for j, f in futs.items()})
        bypass = sorted(POLICY_STOPS, key=lambda n: CASES[n][2][0] != "timeout")  # long ones first
        with mock.patch.object(fe, "check_policy", lambda code: None), ThreadPoolExecutor(2) as threads:
            futs = {(n, "bypass"): threads.submit(pool.run, _run, n, CASES[n][0]) for n in bypass}
            out.update({j: f.result() for j, f in futs.items()})
        out[("good", "after")] = pool.run(_run, "good", GOOD)
    finally:
        pool.close()
    return out


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", POLICY_STOPS)
def test_policy_rejects(name):
    """The normal path: rejected by the policy, in this process, with the construct named."""
    code, reason, _ = CASES[name]
    ev = _run(name, code)
    assert ev.status == "rejected", (ev.status, ev.reason)
    assert ev.reason.startswith("policy: line "), ev.reason
    assert reason in ev.reason, ev.reason


@pytest.mark.parametrize("name", SANDBOX_ONLY)
def test_sandbox_contains_with_policy_on(outcomes, name):
    _, _, (status, reason) = CASES[name]
    ev = outcomes[(name, "policy")]
    assert (ev.status, reason in ev.reason) == (status, True), (ev.status, ev.reason, ev.metrics.get("log_tail", "")[-600:])


@pytest.mark.parametrize("name", POLICY_STOPS)
def test_sandbox_contains_with_policy_bypassed(outcomes, name):
    _, _, (status, reason) = CASES[name]
    ev = outcomes[(name, "bypass")]
    assert (ev.status, reason in ev.reason) == (status, True), (ev.status, ev.reason, ev.metrics.get("log_tail", "")[-600:])
    assert ev.score is None


def test_evaluator_survives(outcomes):
    for when in ("before", "after"):
        ev = outcomes[("good", when)]
        assert ev.status == "ok", (when, ev.reason, ev.metrics.get("log_tail", "")[-600:])
        assert 0.0 <= ev.score <= 1.0
    assert outcomes[("good", "before")].score == outcomes[("good", "after")].score  # same seed, same score
    assert outcomes[("good", "after")].metrics["sandbox_kernel"].startswith(("landlock", "unavailable"))
    assert {ev.metrics.get("launch") for ev in outcomes.values() if ev.metrics} == {"fork"}


def test_archive_unchanged(outcomes, archive):
    assert (_digest(ARCHIVE), os.stat(ARCHIVE).st_mtime_ns) == archive
    con = sqlite3.connect(ARCHIVE)
    assert con.execute("select * from genomes").fetchall() == [("seed", 0.5)]
    con.close()


def test_no_side_effects(outcomes):
    leftovers = [p for p in os.listdir("/tmp") if p.startswith(TAG) and not p.endswith("-archive")]
    leftovers += [p for p in os.listdir(PROJECT) if p.startswith(TAG)]
    assert leftovers == []
