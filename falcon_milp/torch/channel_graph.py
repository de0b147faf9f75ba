"""The channel-coupling graph of a network: which channels must be pruned together.

(Over 400 lines because the tracer's per-node rules are one table of cases read together.)

The model is traced with ``torch.fx`` and its shapes propagated on an example input. Every
tensor's channel dimension is followed as an array of *channel units* (one id per channel):

- a convolution or linear layer creates fresh units for its outputs (it *produces* them) and
  *consumes* the units of its input (a linear layer after ``flatten`` reads each unit at
  H x W positions: its spatial multiplicity);
- BatchNorm, activations, pooling, dropout and spatial slicing keep the units; a depthwise
  convolution (groups = in = out channels) keeps them too (its filters are tied to them);
- an addition (or product) of two tensors ties their units position by position (an edge of a
  networkx graph), a concatenation along channels joins the arrays;
- the model's input and output units are fixed; so are the units behind a channel pad or a
  channel slice (their sizes are Python constants in ``forward`` that surgery cannot rewrite).

The connected components of the tie graph are the channels pruned together; components that
every module sees the same way (same producers, norms, consumers) form one :class:`ChannelGroup`,
the decision unit of the channel MILP. An operation the graph does not know raises
:class:`~falcon_milp.torch.ModelError` naming the module or function.
"""
from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import ModelError

__all__ = ["ChannelGraph", "ChannelGroup", "Member", "build_channel_graph", "eval_mode"]

_KEEP_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                 nn.Hardswish, nn.Hardsigmoid, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d,
                 nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_KEEP_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, torch.tanh,
                   F.hardswish, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_max_pool2d, F.max_pool1d, F.avg_pool1d}
_KEEP_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_TIE_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}
_TIE_METHODS = {"add", "add_", "sub", "mul"}


@dataclass(frozen=True)
class Member:
    """How one module sees a group: ``role`` is ``producer`` (its output channels), ``depthwise``
    (its tied filters), ``norm`` (BatchNorm channels) or ``consumer`` (its input channels, each
    read at ``multiplicity`` flattened positions); ``positions[j]`` is the index in the
    module's channel dimension of the group's channel j."""

    module: str
    role: str
    positions: np.ndarray
    multiplicity: int = 1


@dataclass
class ChannelGroup:
    """Channels pruned together: ``size`` of them, the modules that see them, ``fixed`` when
    they cannot be pruned (model input/output, channel pads and slices)."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    fixed: bool = False

    def roles(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]


@dataclass
class ModuleUse:
    """A convolution or linear layer: the unit arrays of its input and output channels."""

    name: str
    module: nn.Module
    kind: str                   # "conv", "depthwise" or "linear"
    in_units: np.ndarray        # (C_in,) unit id per input channel (-1: a constant zero)
    out_units: np.ndarray       # (C_out,)
    multiplicity: int           # flattened positions per input unit (linear after flatten)
    positions: int              # output positions per example (H_out W_out; tokens for linear)
    in_shape: tuple[int, ...] = ()   # the input's shape in the traced pass (batch first)


@dataclass
class ChannelGraph:
    """Groups and the module uses they come from (see the module docstring)."""

    groups: list[ChannelGroup]
    uses: dict[str, ModuleUse]
    norms: dict[str, np.ndarray]
    graph: nx.Graph
    unit_group: np.ndarray       # unit id -> (group index, channel index in the group)

    @property
    def prunable(self) -> list[int]:
        return [g for g, grp in enumerate(self.groups) if not grp.fixed]


@dataclass
class _Layout:
    """A tensor's channel units (``units``) and how many flattened positions each one spans."""

    units: np.ndarray
    spatial: int = 1
    rigid: bool = False


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode within the block; every submodule's own flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


class _Tracer:
    def __init__(self, model: nn.Module, example_input: Any) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported in one line
            raise ModelError(f"{type(model).__name__} cannot be traced by torch.fx for the channel graph: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            with eval_mode(model):
                self.gm.eval()
                with torch.no_grad():
                    ShapeProp(self.gm).propagate(*args)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"the example input does not run through {type(model).__name__}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        self.n_units = 0
        self.fixed: set[int] = set()
        self.graph = nx.Graph()
        self.uses: dict[str, ModuleUse] = {}
        self.norms: dict[str, np.ndarray] = {}
        self.layouts: dict[fx.Node, Any] = {}

    # -- helpers
    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.n_units, self.n_units + n, dtype=np.int64)
        self.graph.add_nodes_from(ids.tolist())
        self.n_units += n
        return ids

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def layout(self, arg: Any, where: str) -> _Layout:
        lay = self.layouts.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(lay, _Layout):
            raise ModelError(f"{where}: its input is not a tensor the channel graph follows")
        return lay

    def fix(self, units: np.ndarray) -> None:
        self.fixed.update(int(u) for u in units if u >= 0)

    def tie(self, a: _Layout, b: _Layout, where: str) -> _Layout:
        if a.units.size != b.units.size or a.spatial != b.spatial:
            if a.units.size * a.spatial == 1 or b.units.size * b.spatial == 1:
                return a if b.units.size * b.spatial == 1 else b     # broadcast of one value
            raise ModelError(f"{where}: adds tensors of {a.units.size} and {b.units.size} channels; "
                             "broadcasting over channels is not supported")
        out = a.units.copy()
        for i, (u, v) in enumerate(zip(a.units.tolist(), b.units.tolist())):
            if u >= 0 and v >= 0:
                self.graph.add_edge(u, v)
            elif u < 0:
                out[i] = v
        if a.rigid or b.rigid:
            self.fix(a.units)
            self.fix(b.units)
        return _Layout(out, a.spatial)

    def check_operands(self, node: fx.Node, where: str) -> None:
        """Refuse a per-channel tensor the graph does not follow (a parameter of shape (1, C, 1, 1),
        say): surgery could not slice it."""
        for arg in node.args:
            if isinstance(arg, fx.Node) and not isinstance(self.layouts.get(arg), _Layout):
                shape = self.shape(arg)
                if shape is not None and len(shape) >= 2 and shape[1] > 1:
                    raise ModelError(f"{where}: combines a tensor with '{arg.name}' of shape {tuple(shape)}, "
                                     "a per-channel tensor the channel graph cannot slice")

    # -- node kinds
    def module_node(self, node: fx.Node) -> Any:
        name = str(node.target)
        mod = self.modules[name]
        where = f"module '{name}' ({type(mod).__name__})"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear) + _NORMS):
            if name in self.uses or name in self.norms:
                raise ModelError(f"{where} is called more than once in forward; not supported by the "
                                 "channel graph")
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            lay = self.layout(node.args[0], where)
            if lay.spatial != 1:
                raise ModelError(f"{where}: reads a flattened tensor")
            out_shape = self.shape(node)
            pos = math.prod(out_shape[2:]) if out_shape else 1
            if mod.groups == 1:
                out = self.fresh(mod.out_channels)
                self.uses[name] = ModuleUse(name, mod, "conv", lay.units, out, 1, pos, self.shape(node.args[0]))
                return _Layout(out)
            if mod.groups == mod.in_channels == mod.out_channels:
                self.uses[name] = ModuleUse(name, mod, "depthwise", lay.units, lay.units, 1, pos,
                                            self.shape(node.args[0]))
                return _Layout(lay.units)
            raise ModelError(f"{where}: grouped convolution with groups={mod.groups} (not depthwise) is "
                             "not supported by the channel graph")
        if isinstance(mod, nn.Linear):
            lay = self.layout(node.args[0], where)
            in_shape = self.shape(node.args[0])
            if in_shape is not None and len(in_shape) != 2:
                raise ModelError(f"{where}: applied to a {len(in_shape)}-D tensor; only (N, features) "
                                 "inputs are supported by the channel graph")
            out = self.fresh(mod.out_features)
            self.uses[name] = ModuleUse(name, mod, "linear", lay.units, out, lay.spatial, 1, in_shape or ())
            return _Layout(out)
        if isinstance(mod, _NORMS):
            lay = self.layout(node.args[0], where)
            if lay.spatial != 1:
                raise ModelError(f"{where}: normalises a flattened tensor (features, not channels); "
                                 "not supported by the channel graph")
            self.norms[name] = lay.units
            return lay
        if isinstance(mod, _KEEP_MODULES):
            return self.layout(node.args[0], where)
        if isinstance(mod, nn.Flatten):
            return self.flatten(node.args[0], mod.start_dim, where)
        raise ModelError(f"{where} is not supported by the channel graph")

    def flatten(self, src: Any, start_dim: int, where: str) -> _Layout:
        lay = self.layout(src, where)
        in_shape = self.shape(src)
        if start_dim != 1 or in_shape is None or len(in_shape) < 2:
            raise ModelError(f"{where}: only flatten from dim 1 of a (N, C, ...) tensor is supported")
        return _Layout(lay.units, lay.spatial * math.prod(in_shape[2:]), lay.rigid)

    def function_node(self, node: fx.Node) -> Any:
        fn = node.target
        where = f"function '{getattr(fn, '__name__', fn)}' (node {node.name})"
        tensors = [a for a in node.args if isinstance(a, fx.Node) and isinstance(self.layouts.get(a), _Layout)]
        if fn in _TIE_FUNCTIONS:
            self.check_operands(node, where)
            if len(tensors) == 2:
                return self.tie(self.layouts[tensors[0]], self.layouts[tensors[1]], where)
            if len(tensors) == 1:
                return self.layouts[tensors[0]]
            return None
        if fn in _KEEP_FUNCTIONS:
            return self.layout(node.args[0], where)
        if fn is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self.flatten(node.args[0], start, where)
        if fn is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = [self.layout(a, where) for a in node.args[0]]
            if dim != 1 or any(p.spatial != 1 for p in parts):
                raise ModelError(f"{where}: only concatenation along channels (dim=1) is supported")
            return _Layout(np.concatenate([p.units for p in parts]), 1, any(p.rigid for p in parts))
        if fn is F.pad:
            lay = self.layout(node.args[0], where)
            pad = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs["pad"])
            in_shape = self.shape(node.args[0])
            nd = len(in_shape) if in_shape else 4
            channel_pad = pad[2 * (nd - 2):2 * (nd - 1)] if len(pad) >= 2 * (nd - 1) else [0, 0]
            if any(channel_pad):
                self.fix(lay.units)
                before, after = int(channel_pad[0]), int(channel_pad[1])
                units = np.concatenate([np.full(before, -1), lay.units, np.full(after, -1)]).astype(np.int64)
                return _Layout(units, lay.spatial, True)
            return lay
        if fn is operator.getitem:
            src = node.args[0]
            lay = self.layouts.get(src)
            if not isinstance(lay, _Layout):
                return None          # indexing a shape or a tuple
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            if any(i is Ellipsis or i is None or not isinstance(i, (slice, int)) for i in idx):
                raise ModelError(f"{where}: only indexing by slices and integers (no ..., None or "
                                 "tensors) is supported by the channel graph")
            if len(idx) >= 2 and idx[1] != slice(None):
                self.fix(lay.units)
                return _Layout(lay.units[idx[1]], lay.spatial, True)
            return lay
        raise ModelError(f"{where} is not supported by the channel graph")

    def method_node(self, node: fx.Node) -> Any:
        name = str(node.target)
        where = f"method '.{name}()' (node {node.name})"
        src = node.args[0]
        lay = self.layouts.get(src)
        if not isinstance(lay, _Layout):
            return None
        if name == "size" or name == "dim":
            return None
        if name in _KEEP_METHODS:
            return lay
        if name in _TIE_METHODS:
            self.check_operands(node, where)
            other = node.args[1] if len(node.args) > 1 else None
            if isinstance(other, fx.Node) and isinstance(self.layouts.get(other), _Layout):
                return self.tie(lay, self.layouts[other], where)
            return lay
        if name in ("view", "reshape", "flatten"):
            in_shape, out_shape = self.shape(src), self.shape(node)
            if in_shape and out_shape and len(out_shape) == 2 and out_shape[0] == in_shape[0]:
                return self.flatten(src, 1, where)
            raise ModelError(f"{where}: only a reshape to (N, C*H*W) is supported")
        if name in ("mean", "sum", "amax"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            if dims and all(d >= 2 for d in dims):
                return lay
            raise ModelError(f"{where}: only reductions over spatial dims are supported")
        raise ModelError(f"{where} is not supported by the channel graph")

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.shape(node)
                if shape is not None and len(shape) >= 2:
                    units = self.fresh(shape[1])
                    self.fix(units)
                    self.layouts[node] = _Layout(units)
            elif node.op == "call_module":
                self.layouts[node] = self.module_node(node)
            elif node.op == "call_function":
                self.layouts[node] = self.function_node(node)
            elif node.op == "call_method":
                self.layouts[node] = self.method_node(node)
            elif node.op == "get_attr":
                self.layouts[node] = None
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    lay = self.layouts.get(arg)
                    if isinstance(lay, _Layout):
                        self.fix(lay.units)


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n) or n)
    return out


def build_channel_graph(model: nn.Module, example_input: Any) -> ChannelGraph:
    """Trace ``model`` on ``example_input`` and group its coupled channels (module docstring)."""
    t = _Tracer(model, example_input)
    t.run()
    comp_of = np.full(t.n_units, -1, dtype=np.int64)
    comps = list(nx.connected_components(t.graph))
    for c, members in enumerate(comps):
        comp_of[list(members)] = c
    fixed_comp = np.zeros(len(comps), dtype=bool)
    if t.fixed:
        fixed_comp[np.unique(comp_of[list(t.fixed)])] = True

    # how each module sees each component: (module, role) -> position of that component's channel
    seen: dict[int, list[tuple[str, str, int, int]]] = {c: [] for c in range(len(comps))}

    def note(module: str, role: str, units: np.ndarray, mult: int = 1) -> None:
        for pos, u in enumerate(units.tolist()):
            if u >= 0:
                seen[int(comp_of[u])].append((module, role, pos, mult))

    for name, use in t.uses.items():
        if use.kind == "depthwise":
            note(name, "depthwise", use.out_units)
        else:
            note(name, "producer", use.out_units)
            note(name, "consumer", use.in_units, use.multiplicity)
    for name, units in t.norms.items():
        note(name, "norm", units)

    # components with the same signature (the same modules in the same roles) form one group
    by_signature: dict[tuple, list[int]] = {}
    for c in range(len(comps)):
        sig = tuple(sorted({(m, r, mult) for m, r, _p, mult in seen[c]})) + (("fixed", bool(fixed_comp[c])),)
        by_signature.setdefault(sig, []).append(c)
    groups: list[ChannelGroup] = []
    unit_group = np.full((t.n_units, 2), -1, dtype=np.int64)
    for sig, members in by_signature.items():
        if len(sig) == 1:
            continue            # units nothing reads or writes (the model input alone, say)
        members.sort(key=lambda c: min(p for _m, _r, p, _x in seen[c]) if seen[c] else 0)
        positions: dict[tuple[str, str, int], list[int]] = {}
        for c in members:
            per: dict[tuple[str, str, int], int] = {}
            for m, r, p, mult in seen[c]:
                if per.setdefault((m, r, mult), p) != p:
                    raise ModelError(f"module '{m}': channels {per[(m, r, mult)]} and {p} of its "
                                     f"{r} side are tied to each other; not supported")
            for key, p in per.items():
                positions.setdefault(key, []).append(p)
        mem = [Member(m, r, np.array(ps, dtype=np.int64), mult) for (m, r, mult), ps in sorted(positions.items())]
        head = next((x for x in mem if x.role == "producer"), None)
        base = head.module if head is not None else f"input:{mem[0].module}"
        gi = len(groups)
        taken = sum(g.name.split("#")[0] == base for g in groups)
        groups.append(ChannelGroup(base + (f"#{taken}" if taken else ""), len(members), mem, bool(sig[-1][1])))
        for j, c in enumerate(members):
            unit_group[list(comps[c]), 0] = gi
            unit_group[list(comps[c]), 1] = j
    return ChannelGraph(groups, t.uses, t.norms, t.graph, unit_group)
