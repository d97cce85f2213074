"""Static AST policy: may this genome's source be run at all?

A fast first filter with clear messages for the LLM, not a boundary: it is purely syntactic,
so a determined genome can get past it (`Mixer.method(torch)` makes `self` be torch), and
nothing depends on it for safety (the kernel layers of fitness.containment hold whatever the
genome's code does, and the engine computes the score). It is deliberately strict: a genome
may import only a few numeric modules, may not name dangerous builtins or attributes, may not
reach private or dunder attributes (the classic `().__class__.__base__.__subclasses__()`
escapes) except on `self` as the first parameter of a method, and may not assign to
attributes of anything else (no monkeypatching torch). A rejection names the line and the
construct so the LLM repair step can fix it.
"""
from __future__ import annotations

import ast

from records.source import parse as parse_source

ALLOWED_IMPORTS = frozenset({
    "torch", "torch.nn", "torch.nn.functional", "math", "typing", "functools", "einops", "__future__",
})

FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "breakpoint", "input", "help", "exit", "quit", "memoryview", "dir", "SystemExit",
    "KeyboardInterrupt", "GeneratorExit", "type", "object", "__builtins__", "__loader__", "__spec__", "__file__",
})

# Attribute names that reach files, processes, code loading, interpreter internals or
# global torch state, wherever they appear (aliases like `t = torch; t.load` included).
FORBIDDEN_ATTRS = frozenset({
    # modules reachable as attributes of allowed modules (torch.os, F.torch.sys, ...)
    "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "shutil", "pathlib",
    "io", "pickle", "marshal", "signal", "threading", "multiprocessing", "inspect", "gc", "types",
    "runpy", "pty", "resource", "tempfile", "glob", "platform", "warnings", "weakref", "code", "codeop",
    # torch: files, code loading, native extensions, compilers, global state
    "load", "save", "hub", "utils", "cpp_extension", "ops", "classes", "library", "package", "jit",
    "compile", "export", "fx", "onnx", "profiler", "serialization", "from_file", "tofile", "dump",
    "numpy", "distributed", "backends", "set_num_threads", "set_num_interop_threads", "manual_seed",
    "seed", "set_rng_state", "set_default_dtype", "set_default_device", "set_default_tensor_type",
    "use_deterministic_algorithms", "register_module_forward_hook", "register_module_forward_pre_hook",
    "register_module_backward_hook", "register_module_full_backward_hook",
    "register_module_full_backward_pre_hook", "register_module_buffer_registration_hook",
    "register_module_parameter_registration_hook", "register_module_module_registration_hook",
    # typing evaluates strings
    "get_type_hints", "ForwardRef",
    # stdlib modules reachable through allowed ones (typing.operator, typing.collections, ...)
    "operator", "collections", "contextlib", "copyreg", "copy", "re", "abc", "functools", "typing",
    # functools helpers that copy attributes (`__code__`, `__dict__`) onto another object
    "update_wrapper", "wraps", "attrgetter", "methodcaller",
    # tensor subclasses (a forward could return a tensor whose argmax lies to the scoring),
    # shared memory files, torch's compiler and dispatch overrides
    "as_subclass", "share_memory_", "compiler", "overrides", "set_grad_enabled",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_backward_hook", "register_load_state_dict_post_hook",
    "register_state_dict_pre_hook",
    # frame / code / generator introspection
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_trace", "f_lasti", "gi_frame",
    "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await",
    "tb_frame", "tb_next", "co_code", "co_consts", "func_globals", "func_code", "mro", "with_traceback",
})


# Tensor types a genome class may not derive from (checked on the last name of the base).
_TENSOR_TYPES = frozenset({"Tensor", "TensorBase", "Parameter", "Buffer", "UninitializedParameter",
                           "UninitializedBuffer", "UninitializedTensorMixin", "Size", "Generator"})


class PolicyViolation(ValueError):
    """The genome breaks the static policy; str() is the reason."""


def check_policy(code: str) -> str | None:
    """Return None if `code` may run, else a one-line reason naming the line and the construct."""
    try:
        tree = parse_source(code)
    except SyntaxError as e:
        return f"syntax error at line {e.lineno}: {e.msg}"
    except (ValueError, RecursionError, MemoryError) as e:
        return f"unparsable source: {type(e).__name__}: {e}"
    visitor = _Visitor()
    try:
        visitor.visit(tree)
    except PolicyViolation as e:
        return str(e)
    except RecursionError:
        return "source nests too deeply to check"
    if not visitor.has_mixer:
        return "no top-level `class Mixer` defined"
    return None


def _root(node: ast.expr) -> ast.expr:
    """The innermost object of a chain like a.b[c].d -> a."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.has_mixer = False
        self.depth = 0  # class/function nesting
        self.classes: set[str] = set()  # classes the genome defined so far (may be subclassed)
        self.torch_aliases: set[str] = set()  # names bound to torch, torch.nn, ..., typing
        self.torch_names: set[str] = set()  # names imported from torch.nn, torch.autograd, typing
        self.in_class = [False]  # per scope: is it a class body (so its functions are methods)
        self.method_self = [False]  # per scope: is `self` the first parameter of an enclosing method

    def _check_base(self, base: ast.expr, node: ast.ClassDef) -> None:
        """A class may derive only from torch.nn / torch.autograd / typing classes or the
        genome's own classes, never from a tensor type (a tensor subclass could lie to the scoring)."""
        parts = []
        cur = base
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        name = parts[0] if parts else getattr(cur, "id", "")
        ok = isinstance(cur, ast.Name) and (
            (not parts and (cur.id in self.classes or cur.id in self.torch_names))
            or (parts and cur.id in self.torch_aliases))
        if not ok or name in _TENSOR_TYPES:
            self.fail(node, f"the base class `{ast.unparse(base)}` (a class may derive only from torch.nn / "
                            "torch.autograd classes or classes defined in the genome, never from a tensor type)")

    def _is_self(self, node: ast.expr) -> bool:
        """`self` as the first parameter of an enclosing method (not any variable named self)."""
        return isinstance(node, ast.Name) and node.id == "self" and self.method_self[-1]

    def fail(self, node: ast.AST, what: str) -> None:
        raise PolicyViolation(f"line {getattr(node, 'lineno', '?')}: {what} is not allowed")

    # imports -------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if (alias.asname or alias.name.split(".")[0]) == "self":
                self.fail(node, "rebinding `self`")
            if alias.name not in ALLOWED_IMPORTS:
                self.fail(node, f"import of `{alias.name}` (allowed: {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))})")
            if alias.name.startswith("torch") or alias.name == "typing":
                self.torch_aliases.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module not in ALLOWED_IMPORTS:
            self.fail(node, f"import from `{'.' * node.level}{node.module or ''}`")
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            if (alias.asname or alias.name) == "self":
                self.fail(node, "rebinding `self`")
            if alias.name == "*":
                self.fail(node, f"`from {node.module} import *`")
            if (alias.name in FORBIDDEN_ATTRS or alias.name in FORBIDDEN_NAMES or alias.name.startswith("_")) \
                    and node.module != "__future__":
                self.fail(node, f"importing `{full}`")
            if node.module == "torch" and alias.name in ("nn", "autograd"):
                self.torch_aliases.add(alias.asname or alias.name)
            elif node.module in ("torch.nn", "torch.autograd", "typing") or (node.module == "torch" and alias.name == "Tensor"):
                self.torch_names.add(alias.asname or alias.name)

    # names and attributes ----------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES or _is_dunder(node.id):
            self.fail(node, f"the name `{node.id}`")
        if node.id == "self" and not isinstance(node.ctx, ast.Load):
            self.fail(node, "rebinding `self`")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name == "self":
            self.fail(node, "rebinding `self`")
        self.generic_visit(node)


    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)  # innermost first: `torch.hub.load` is reported as `.hub`
        name = node.attr
        if name in FORBIDDEN_ATTRS:
            self.fail(node, f"attribute `.{name}`")
        if _is_dunder(name):
            is_super_init = (name == "__init__" and isinstance(node.value, ast.Call)
                             and isinstance(node.value.func, ast.Name) and node.value.func.id == "super")
            if not is_super_init:
                self.fail(node, f"dunder attribute `.{name}` (only `super().__init__` is allowed)")
        elif name.startswith("_") and not self._is_self(node.value):
            self.fail(node, f"private attribute `.{name}` (only on `self`, the first parameter of a method)")

    # assignments: only to local names or attributes of self --------------------------------
    def _check_target(self, target: ast.expr, node: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._check_target(elt, node)
            return
        if isinstance(target, ast.Starred):
            self._check_target(target.value, node)
            return
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            root = _root(target)
            if isinstance(target, ast.Attribute) and not self._is_self(root):
                self.fail(node, "assigning to an attribute of anything but `self` (e.g. monkeypatching torch)")
            if isinstance(target, ast.Attribute) and not isinstance(target.value, ast.Name):
                self.fail(node, f"assigning to the nested attribute `{ast.unparse(target)}` (only `self.name = ...` "
                                "is allowed: `self.t = torch; self.t.tanh = ...` would monkeypatch torch)")
            if isinstance(target, ast.Subscript) and self.depth == 0:
                self.fail(node, "item assignment at module level")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_target(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_target(t, node)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._check_target(node.optional_vars, node.context_expr)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._check_target(node.target, node.iter)
        self.generic_visit(node)

    # definitions -------------------------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.keywords:
            self.fail(node, "class keywords (metaclass=...)")
        for base in node.bases:
            self._check_base(base, node)
        self.classes.add(node.name)
        if node.name == "Mixer" and self.depth == 0:
            self.has_mixer = True
        if _is_dunder(node.name):
            self.fail(node, f"the class name `{node.name}`")
        self.depth += 1
        self.in_class.append(True)
        self.method_self.append(False)
        self.generic_visit(node)
        self.method_self.pop()
        self.in_class.pop()
        self.depth -= 1

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if _is_dunder(node.name) and node.name != "__init__":
            self.fail(node, f"defining `{node.name}` (the only dunder method allowed is `__init__`)")
        args = node.args.posonlyargs + node.args.args
        is_method = self.in_class[-1] and bool(args) and args[0].arg == "self" and not node.decorator_list
        rebinds = any(a.arg == "self" for a in args[1:] + node.args.kwonlyargs) or \
            (node.args.vararg and node.args.vararg.arg == "self") or (node.args.kwarg and node.args.kwarg.arg == "self")
        self.depth += 1
        self.in_class.append(False)
        self.method_self.append(is_method or (self.method_self[-1] and not rebinds and not (args and args[0].arg == "self")))
        self.generic_visit(node)
        self.method_self.pop()
        self.in_class.pop()
        self.depth -= 1

    def visit_Lambda(self, node: ast.Lambda) -> None:
        names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        self.method_self.append(self.method_self[-1] and "self" not in names)
        self.in_class.append(False)
        self.generic_visit(node)
        self.in_class.pop()
        self.method_self.pop()

    visit_FunctionDef = _visit_function

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.fail(node, "`async def`")

    def visit_Global(self, node: ast.Global) -> None:
        self.fail(node, "`global`")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.fail(node, "`nonlocal`")

    def visit_arg(self, node: ast.arg) -> None:
        if _is_dunder(node.arg):
            self.fail(node, f"the parameter name `{node.arg}`")
        self.generic_visit(node)
