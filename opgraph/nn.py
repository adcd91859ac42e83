"""A tiny neural-network library on top of Value: micrograd's `nn`, with labels and engines.

`Neuron`, `Layer` and `MLP` have micrograd's signatures and behaviour (a Layer with one output
returns a Value, not a list). On top of that:
- `act=` chooses the activation: "relu" (the default, as micrograd), "tanh", the name of any
  unary op of the engine (a plugin's too), or a function from Value to Value;
- `engine=` builds the parameters in that Engine (default: the default engine);
- `rng=` is the `random.Random` to draw initial weights from (default: the `random` module);
- parameters are labelled by where they sit ("L0.N3.w1", "L0.N3.b") and so is each neuron's
  output ("L0.N3"), so drawings and the live viewer show which module a node belongs to;
- calling a Layer or a Neuron opens a scope named after it (`opgraph.scope`): the ops of
  neuron 3 of layer 0 carry the scope path "L0/N3" (an MLP opens none of its own). Building
  one opens the same scopes, so the neuron's parameters carry "L0/N3" too. A neuron called
  by itself, outside its layer, opens the whole path of its name ("L0/N3"), so its ops
  still sit with its parameters;
- `MLP(..., stored=True)` keeps every parameter's number and gradient in one
  `ParameterStore` (`model.store`; stored.py), which makes batched replay and the optimisers
  faster (docs/performance.md); `Neuron` and `Layer` take a `store=` of your own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .engine import Engine, default_engine
from .modes import child_path, scope_path
from .stored import ParameterStore
from .value import Value

Activation = str | Callable[[Value], Value]


class Module:
    """Anything with parameters. `zero_grad()` resets their gradients before a backward pass."""

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0

    def parameters(self) -> list[Value]:
        return []


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _scope_name(name: str, kind: str) -> str:
    """The scope a module opens: the last part of its name ("N3" for "L0.N3"), else its kind."""
    return name.rsplit(".", 1)[-1].replace("/", "_") or kind


def _outer_scope(name: str) -> str:
    """The scope path of the modules a module's name says it sits in: "L0" for "L0.N3"."""
    return "/".join(part.replace("/", "_") for part in name.split(".")[:-1])


def _scope_in(module: Neuron | Layer, parent: str) -> str:
    """The path of the module's scope inside scope `parent`. The module remembers it for the
    scope it was last called in (as one tuple, which threads swap whole): opening a scope
    per neuron call must cost little next to the neuron's own ops."""
    cached = module._scope_cache
    if cached[0] is not parent:
        cached = module._scope_cache = (parent, _own_scope(module, parent))
    return cached[1]


def _own_scope(module: Neuron | Layer, parent: str) -> str:
    """The module's scope inside `parent`: its own name ("N3") inside its layer's scope;
    called anywhere else (a neuron called by itself, as a drawing does), the path its name
    gives ("L0/N3"), so that its ops sit with its parameters, not in a stray group "N3"."""
    outer = module.outer_scope
    if outer and parent != outer and not parent.endswith("/" + outer):
        for name in outer.split("/"):
            parent = child_path(parent, name)
    return child_path(parent, module.scope_name)


@contextmanager
def _building(scope_name: str) -> Iterator[None]:
    """The module's scope, inside the current one, while its parameters are made: they carry
    the path its ops will carry when it is called in the same scope ("L0/N3")."""
    token = scope_path.set(child_path(scope_path.get(), scope_name))
    try:
        yield
    finally:
        scope_path.reset(token)


def _check_activation(act: Activation, engine: Engine) -> None:
    """Fail at construction, not at the first forward, when `act` names no unary op."""
    if callable(act):
        return
    if not isinstance(act, str):
        raise TypeError(f"act must be an op name or a function of a Value, got {act!r}")
    unary = sorted(name for name, op in engine.ops.definitions.items() if op.arity == 1)
    if act not in engine.ops:
        raise ValueError(
            f"act={act!r}: engine {engine.name!r} has no op of that name; "
            f"its unary ops are: {', '.join(unary)}"
        )
    if act not in unary:
        arity = engine.ops.definitions[act].arity
        raise ValueError(
            f"act={act!r}: op {act!r} takes {arity} operands, an activation takes one; "
            f"the unary ops of engine {engine.name!r} are: {', '.join(unary)}"
        )


def _activation_title(act: Activation) -> str:
    """How `repr` names a neuron's activation: ReLUNeuron, TanhNeuron, SinNeuron ..."""
    name = act if isinstance(act, str) else getattr(act, "__name__", "Custom")
    return "ReLU" if name == "relu" else name[:1].upper() + name[1:]


def _as_inputs(x: Iterable[Value | float] | Value) -> Sequence[Value | float]:
    """A list or tuple of inputs from any iterable, or from the Value a one-neuron layer returns."""
    if isinstance(x, Value):
        return [x]
    return x if isinstance(x, list | tuple) else list(x)


class Neuron(Module):
    """out = act(w . x + b), or w . x + b when `nonlin` is false."""

    def __init__(
        self,
        nin: int,
        nonlin: bool = True,
        act: Activation = "relu",
        *,
        engine: Engine | None = None,
        rng: random.Random | None = None,
        name: str = "",
        store: ParameterStore | None = None,
    ):
        self.engine = engine if engine is not None else default_engine()
        _check_activation(act, self.engine)
        uniform = (rng or random).uniform  # micrograd draws from the `random` module
        value = self.engine.value if store is None else _store_of(store, self.engine).value
        self.scope_name = _scope_name(name, "Neuron")
        self.outer_scope = _outer_scope(name)
        with _building(self.scope_name):
            self.w = [value(uniform(-1, 1), _join(name, f"w{i}")) for i in range(nin)]
            self.b = value(0.0, _join(name, "b"))
        self.nonlin = nonlin
        self.act = act
        self.name = name
        self._scope_cache: tuple[str | None, str] = (None, "")

    def __call__(self, x: Iterable[Value | float] | Value) -> Value:
        x = _as_inputs(x)
        if len(x) != len(self.w):
            raise ValueError(
                f"neuron {self.name or repr(self)} takes {len(self.w)} inputs, got {len(x)}"
            )
        token = scope_path.set(_scope_in(self, scope_path.get()))
        try:
            return self._forward(x)
        finally:
            scope_path.reset(token)

    def _forward(self, x: Sequence[Value | float]) -> Value:
        """The neuron's ops, in whatever scope is current."""
        out = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        if self.nonlin:
            act = self.act
            out = self.engine.ops[act](out) if isinstance(act, str) else act(out)
        if self.name and out is not self.b:
            out.label = self.name
        return out

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        kind = _activation_title(self.act) if self.nonlin else "Linear"
        return f"{kind}Neuron({len(self.w)})"


def _store_of(store: ParameterStore, engine: Engine) -> ParameterStore:
    if not isinstance(store, ParameterStore):
        raise TypeError(f"store= takes a ParameterStore, got {type(store).__name__}: {store!r}")
    if store.engine is not engine:
        raise ValueError(
            f"store= holds parameters of engine {store.engine.name!r}, the neuron is of "
            f"engine {engine.name!r}"
        )
    return store


class Layer(Module):
    """`nout` neurons that read the same inputs. With one neuron it returns a Value."""

    def __init__(
        self, nin: int, nout: int, *, name: str = "", engine: Engine | None = None, **kwargs: Any
    ):
        self.engine = engine if engine is not None else default_engine()
        self.scope_name = _scope_name(name, "Layer")
        self.outer_scope = _outer_scope(name)
        self._scope_cache: tuple[str | None, str] = (None, "")
        with _building(self.scope_name):
            self.neurons = [
                Neuron(nin, name=_join(name, f"N{i}"), engine=self.engine, **kwargs)
                for i in range(nout)
            ]

    def __call__(self, x: Iterable[Value | float] | Value) -> Value | list[Value]:
        x = _as_inputs(x)  # once, so that an iterator reaches every neuron
        path = _scope_in(self, scope_path.get())
        token = scope_path.set(path)
        try:
            out = []
            for n in self.neurons:
                if type(n) is Neuron and len(x) == len(n.w):
                    # The neuron's scope, switched to directly: no scope is closed between
                    # two neurons (the `finally` closes the last), half the work per neuron.
                    scope_path.set(_scope_in(n, path))
                    out.append(n._forward(x))
                else:  # a module of the user's own, or an error for Neuron.__call__ to raise
                    scope_path.set(path)
                    out.append(n(x))
        finally:
            scope_path.reset(token)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A multi-layer perceptron: `MLP(2, [16, 16, 1])` maps 2 inputs through two hidden
    layers of 16 neurons to one output. Every layer but the last applies the activation."""

    def __init__(
        self,
        nin: int,
        nouts: Sequence[int],
        act: Activation = "relu",
        *,
        engine: Engine | None = None,
        rng: random.Random | None = None,
        stored: bool = False,
    ):
        if not isinstance(nouts, Iterable):
            raise TypeError(
                f"MLP({nin!r}, nouts): nouts is the list of layer sizes, as in "
                f"MLP(2, [16, 16, 1]); got {type(nouts).__name__}: {nouts!r}"
            )
        if not nouts:
            raise ValueError(f"MLP({nin!r}, nouts): nouts is empty, an MLP needs a layer")
        sizes = [nin, *nouts]
        self.engine = engine if engine is not None else default_engine()
        # stored=True: every parameter in one ParameterStore, in the order of parameters(),
        # so that batched replay and the optimisers read and write them as one slice
        count = sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(nouts)))
        self.store = ParameterStore(count, self.engine) if stored else None
        self.layers = [
            Layer(
                sizes[i],
                sizes[i + 1],
                nonlin=i != len(nouts) - 1,
                act=act,
                engine=self.engine,
                rng=rng,
                name=f"L{i}",
                store=self.store,
            )
            for i in range(len(nouts))
        ]

    def __call__(self, x: Iterable[Value | float] | Value) -> Value | list[Value]:
        out = self.layers[0](x)
        for layer in self.layers[1:]:
            out = layer(out)
        return out

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"
