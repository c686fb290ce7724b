"""The MaMOL model: a frozen open_clip ViT with a Missing-aware Mixture-of-LoRAs.

Paper: "Rethinking Efficient Mixture-of-Experts for Remote Sensing Modality-Missing
Classification" (MaMOL), Sections 3.1–3.4. Decisions the paper leaves open follow
DESIGN §2; each is marked "Decision" below.

Pipeline for one sample (a P x P window around a pixel) and M modalities:

1. every *present* modality's window becomes P² tokens through its own trainable
   :class:`ModalityTokenEmbedding` (the frozen CLIP ``conv1`` is not used: HS is not RGB);
2. CLS token + frozen position embedding (interpolated when P differs from the ViT grid) +
   frozen ``ln_pre``, then the frozen transformer blocks, the last ``L_e`` of them with a
   :class:`MamolAdapter` in the MLP sublayer; frozen ``ln_post`` and ``proj`` give f_m;
3. a missing modality's feature is a zero tensor and its encoder is not run (paper 4.1);
4. the M features are concatenated and a linear head gives the class logits.

The adapter (paper eqs. 3–8), with z = ln_2(x) of the block::

    x = x + mlp(z) + Δh(z),     Δh = h_dyn + h_stat
    h_dyn  = Σ_{k in top-k} g_k · B_k A_k z,  g = softmax(W_t f_t([z; e(pattern); e(modality)]))
    h_stat = B_s A_s z + B_m A_m z            (shared expert + the encoded modality's expert)

Decision (DESIGN §2.6): the paper writes LayerNorm(h_frozen + Δh); CLIP blocks are
pre-norm, so the next block's ``ln_1`` already normalises and Δh joins the residual stream.
Decision: the top-k gates are the router's softmax probabilities, not renormalised over the
selected experts; with k = 1 renormalising would make every gate 1 and cut the router off
from the gradient.

Model kinds (issue 17): the *pixel* kind above is the paper's; the *tile* kind shares every
part but classifies all P² pixel tokens of the last block, each through ``ln_post`` and
``proj`` and the same head (:meth:`MamolModel.forward_tiles`), so one pass per modality
labels a whole tile. A pixel model's file and tensors are exactly what they were.

Precision (one rule book for the CPU, CUDA and Apple's GPU, no autocast): the frozen tower
holds its weights in the *compute dtype* (fp32; bf16, CUDA's automatic one; or fp16, MPS's
automatic one, via :meth:`MamolModel.set_compute_dtype`) and every activation of the tower
is in that dtype. Trainable tensors stay fp32 and are cast to the compute dtype where they
meet an activation (token embeddings' output, LoRA A/B, the router's first layer). The
router's second layer and its softmax, the gates, the pooled features entering the head
and the logits are always fp32. fp16's narrow range is handled outside the model: training
scales the loss (:class:`training.steps.LossScale`) and non-finite class scores stop a run
(:func:`core.devices.require_finite_scores`).

Speed (DESIGN §4): all LoRA experts of a block run as one matmul into the stacked A's and
one out of the stacked B's, with per-expert weights (routed gates, zero outside a token's
top-k; 1 for the shared and the encoded modality's expert); nothing in the forward waits
for the GPU (no ``torch.nonzero``/``index_add`` on device tensors). The frozen attention
runs through ``F.scaled_dot_product_attention`` with the block's own weights.
"""
import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .devices import CompileMode, to_device
from .errors import MamolInputError
from .model_kinds import ModelKind


class ExpertSet(str, enum.Enum):
    """Which experts exist (paper Table 5 ablations)."""

    FULL = "full"
    NO_DYNAMIC = "no_dynamic"
    NO_STATIC = "no_static"                        # neither shared nor modality-specific
    NO_MODALITY_SPECIFIC = "no_modality_specific"
    NONE = "none"                                  # frozen backbone + embeddings + head

    @property
    def dynamic(self) -> bool:
        return self in (ExpertSet.FULL, ExpertSet.NO_STATIC, ExpertSet.NO_MODALITY_SPECIFIC)

    @property
    def shared(self) -> bool:
        return self in (ExpertSet.FULL, ExpertSet.NO_DYNAMIC, ExpertSet.NO_MODALITY_SPECIFIC)

    @property
    def modality_specific(self) -> bool:
        return self in (ExpertSet.FULL, ExpertSet.NO_DYNAMIC)


@dataclass(frozen=True)
class AdapterConfig:
    """MaMOL adapter hyper-parameters (defaults: the paper's "Last (6 x 2)" setting)."""

    layers: int = 6            # L_e: adapted blocks, counted from the last block
    dynamic_experts: int = 2   # N_d: pattern experts per adapted block
    top_k: int = 1             # k: dynamic experts evaluated per token
    rank: int = 8              # r: LoRA rank of every expert
    alpha: float = 8.0         # LoRA scale is alpha / rank
    router_hidden: int = 64    # width of the router MLP f_t
    embedding_dim: int = 64    # size of the pattern and modality embeddings e(.)
    experts: ExpertSet = ExpertSet.FULL
    mce: bool = False          # MCE training mode: fusion module, auxiliary heads, completion
    kind: ModelKind = ModelKind.PIXEL  # per-pixel windows (the paper) or dense tiles

    def to_json(self) -> Dict[str, object]:
        record = dict(dataclasses.asdict(self), experts=self.experts.value,
                      kind=ModelKind(self.kind).value)
        if not self.mce:
            del record["mce"]   # a plain MaMOL model's header stays what it always was
        if ModelKind(self.kind) is ModelKind.PIXEL:
            del record["kind"]  # likewise: files without the key are pixel models
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> "AdapterConfig":
        values = dict(record)
        values["experts"] = ExpertSet(values.get("experts", "full"))
        values["kind"] = ModelKind(values.get("kind", ModelKind.PIXEL.value))
        return cls(**values)

    def validate(self, backbone_layers: int) -> None:
        if not 1 <= self.layers <= backbone_layers:
            raise MamolInputError(
                f"Adapter layers L_e = {self.layers} must be between 1 and the backbone's "
                f"{backbone_layers} transformer blocks.")
        if self.experts.dynamic and not 1 <= self.top_k <= self.dynamic_experts:
            raise MamolInputError(
                f"top-k = {self.top_k} must be between 1 and the number of dynamic experts "
                f"({self.dynamic_experts}).")
        if self.rank < 1:
            raise MamolInputError(f"LoRA rank {self.rank} must be at least 1.")


@dataclass(frozen=True)
class ModalitySpec:
    """A modality the model knows: its name and band count."""

    name: str
    bands: int


class LoRAExperts(nn.Module):
    """``count`` independent LoRA experts f_i(z) = (alpha / r) · B_i A_i z.

    A is Kaiming-initialised, B is zero, so every expert starts as the zero map and the
    adapted model starts as the frozen CLIP. Experts are never merged into frozen weights:
    which expert applies depends on the input. The experts hold parameters only;
    :class:`MamolAdapter` evaluates those of a block together.
    """

    def __init__(self, count: int, width: int, rank: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(count, rank, width))
        self.lora_B = nn.Parameter(torch.zeros(count, width, rank))
        for index in range(count):
            nn.init.kaiming_uniform_(self.lora_A.data[index], a=math.sqrt(5))


class Router(nn.Module):
    """g = softmax(W_t f_t([z; e(pattern); e(modality)])) per token (paper eq. 6).

    The concatenation is computed as a sum of three products with slices of one weight,
    which is the same linear map without materialising a (tokens, D + 2E) tensor.

    Precision: the token part of f_t runs in z's dtype (the wide product); the hidden layer,
    W_t and the softmax run in fp32, so the gates are fp32 whatever the compute dtype.
    """

    def __init__(self, width: int, embedding_dim: int, hidden: int, experts: int) -> None:
        super().__init__()
        self.width = width
        self.embedding_dim = embedding_dim
        self.f_t = nn.Linear(width + 2 * embedding_dim, hidden)
        self.W_t = nn.Linear(hidden, experts)

    def forward(self, z: torch.Tensor, pattern_embedding: torch.Tensor,
                modality_embedding: torch.Tensor) -> torch.Tensor:
        """fp32 gates (batch, tokens, experts) for z (batch, tokens, width)."""
        weight = self.f_t.weight
        d, e = self.width, self.embedding_dim
        token_part = F.linear(z, weight[:, :d].to(z.dtype))
        context = (F.linear(pattern_embedding.float(), weight[:, d:d + e], self.f_t.bias)
                   + F.linear(modality_embedding.float(), weight[:, d + e:]))
        hidden = token_part.float() + context[:, None, :]
        return torch.softmax(self.W_t(F.gelu(hidden)), dim=-1)


@dataclass
class RoutingContext:
    """What the adapters need to know about the current encoder pass."""

    pattern_embedding: Optional[torch.Tensor]   # (batch, E) e(missing pattern)
    modality_embedding: Optional[torch.Tensor]  # (E,) e(modality being encoded)
    modality_index: int                         # which modality this pass encodes


class MamolAdapter(nn.Module):
    """Δh for one transformer block: dynamic (routed) + static (shared, modality) experts.

    All experts that can act in a pass — the N_d routed ones, the shared one and the encoded
    modality's one — are evaluated together: one matmul of z with their stacked A's (E·r
    outputs), a per-expert weight on each rank-r group, one matmul with their stacked B's.
    The weights are the routed gates where the expert is among the token's top-k and 0
    elsewhere, and 1 for the static experts, so a token's Δh holds exactly its top-k routed
    experts (gate-weighted), the shared expert and its modality's expert (paper eqs. 4–8).
    Experts outside a token's top-k get zero weight, hence zero contribution and zero
    gradient from that token.
    """

    def __init__(self, width: int, modality_count: int, config: AdapterConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        experts = config.experts
        self.dynamic = (LoRAExperts(config.dynamic_experts, width, config.rank)
                        if experts.dynamic else None)
        self.router = (Router(width, config.embedding_dim, config.router_hidden,
                              config.dynamic_experts) if experts.dynamic else None)
        self.shared = LoRAExperts(1, width, config.rank) if experts.shared else None
        self.modality_specific = (LoRAExperts(modality_count, width, config.rank)
                                  if experts.modality_specific else None)
        self.scale = config.alpha / config.rank   # LoRA scale of every expert

    def expert_weights(self, z: torch.Tensor, context: "RoutingContext") -> torch.Tensor:
        """fp32 (batch, tokens, N_d): the routed gates on each token's top-k experts, 0 on
        the others."""
        gates = self.router(z, context.pattern_embedding, context.modality_embedding)
        top_gates, top_index = gates.topk(self.top_k, dim=-1)
        return torch.zeros_like(gates).scatter(-1, top_index, top_gates)

    def forward(self, z: torch.Tensor, context: "RoutingContext") -> torch.Tensor:
        """Δh (batch, tokens, width) in z's dtype."""
        a_parts, b_parts = [], []
        if self.dynamic is not None:
            a_parts.append(self.dynamic.lora_A)
            b_parts.append(self.dynamic.lora_B)
        if self.shared is not None:
            a_parts.append(self.shared.lora_A)
            b_parts.append(self.shared.lora_B)
        if self.modality_specific is not None:
            index = context.modality_index
            a_parts.append(self.modality_specific.lora_A[index:index + 1])
            b_parts.append(self.modality_specific.lora_B[index:index + 1])
        # fp32 trainable tensors -> the activations' dtype, written out (no autocast).
        lora_a = torch.cat(a_parts).to(z.dtype)                # (E, r, D)
        lora_b = torch.cat(b_parts).to(z.dtype)                # (E, D, r)
        experts, rank, width = lora_a.shape
        hidden = F.linear(z, lora_a.reshape(experts * rank, width))  # (batch, tokens, E·r)
        if self.dynamic is not None:
            routed = self.expert_weights(z, context)
            static = routed.new_ones(routed.shape[:-1] + (experts - routed.shape[-1],))
            weights = torch.cat([routed, static], dim=-1).to(z.dtype)   # (batch, tokens, E)
            hidden = (hidden.unflatten(-1, (experts, rank)) * weights[..., None]).flatten(-2)
        stacked_b = lora_b.permute(1, 0, 2).reshape(width, experts * rank) * self.scale
        return F.linear(hidden, stacked_b)


class ModalityTokenEmbedding(nn.Module):
    """Pixel -> token: Conv2d(C, 256, 3 x 3, pad 1) -> GELU -> Conv2d(256, D, 1 x 1)."""

    def __init__(self, bands: int, width: int, hidden: int = 256) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(bands, hidden, kernel_size=3, padding=1)
        self.project = nn.Conv2d(hidden, width, kernel_size=1)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """(batch, bands, P, P) -> (batch, P², width), row-major like ViT patches."""
        tokens = self.project(F.gelu(self.spatial(window)))
        return tokens.flatten(2).transpose(1, 2)


def frozen_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's frozen self-attention on x (batch, tokens, width) through
    ``F.scaled_dot_product_attention`` with the block's own weights (flash / memory-efficient
    kernels on CUDA). Equal to open_clip's ``block.attention(x)`` up to rounding; blocks
    whose attention is not a plain batch-first ``nn.MultiheadAttention`` use their own."""
    attention = block.attn
    if not (isinstance(attention, nn.MultiheadAttention) and attention.batch_first
            and attention.in_proj_weight is not None):
        return block.attention(q_x=x)
    batch, tokens, width = x.shape
    heads = attention.num_heads
    qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)               # (batch, heads, tokens, hd)
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return F.linear(out, attention.out_proj.weight, attention.out_proj.bias)


def _pools_class_token(visual: nn.Module) -> bool:
    """True when open_clip's pooling is "ln_post over the tokens, take token 0", which
    equals ln_post of token 0 alone (LayerNorm is per token)."""
    return (getattr(visual, "attn_pool", None) is None
            and not getattr(visual, "final_ln_after_pool", False)
            and getattr(visual, "pool_type", None) == "tok")


class MamolEncoder(nn.Module):
    """The frozen open_clip image tower with MaMOL adapters in its last ``L_e`` blocks."""

    def __init__(self, visual: nn.Module, modality_count: int, config: AdapterConfig) -> None:
        super().__init__()
        transformer = visual.transformer
        if not getattr(transformer, "batch_first", True):
            raise MamolInputError("MaMOL needs an open_clip ViT that runs batch-first.")
        self.visual = visual
        block_count = len(transformer.resblocks)
        config.validate(block_count)
        self.width = int(transformer.width)
        self.output_dim = int(visual.output_dim)
        self.first_adapted = block_count - config.layers
        adapters = [] if config.experts is ExpertSet.NONE else [
            MamolAdapter(self.width, modality_count, config) for _ in range(config.layers)]
        self.adapters = nn.ModuleList(adapters)
        self.grid = int(round(math.sqrt(visual.positional_embedding.shape[0] - 1)))
        self._position_cache: Dict[tuple, torch.Tensor] = {}
        self._pool_class_token = _pools_class_token(visual)
        self._compiled = None
        self._compiled_tokens = None
        self.freeze_backbone()

    def freeze_backbone(self) -> None:
        """Freeze every tensor of the image tower (idempotent) and keep it in eval mode."""
        for parameter in self.visual.parameters():
            parameter.requires_grad_(False)
        self.visual.eval()

    def train(self, mode: bool = True) -> "MamolEncoder":
        super().train(mode)
        self.visual.eval()     # frozen parts never switch to training behaviour
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the frozen tower's weights, which all its activations take."""
        return self.visual.positional_embedding.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Hold the frozen tower in ``dtype`` (e.g. bf16 on CUDA, fp16 on MPS); trainable
        tensors stay fp32."""
        self.visual.to(dtype)
        self._position_cache.clear()

    def set_compile_mode(self, mode: CompileMode) -> None:
        """Run the encoder pass through ``torch.compile`` in ``mode`` (compiled on the first
        call, then reused by every call of this model; new batch shapes may recompile once
        with a dynamic batch size). ``off`` runs it eagerly again."""
        mode = CompileMode(mode)
        self._compiled = (None if mode is CompileMode.OFF
                          else torch.compile(self._encode, mode=mode.value))
        self._compiled_tokens = (None if mode is CompileMode.OFF
                                 else torch.compile(self._encode_tokens, mode=mode.value))

    def position_embedding(self, patch: int) -> torch.Tensor:
        """Frozen CLS + grid position embedding for a P x P token grid (interpolated)."""
        table = self.visual.positional_embedding
        if patch == self.grid:
            return table
        key = (patch, table.device, table.dtype)
        if key not in self._position_cache:
            grid = table[1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            resized = F.interpolate(grid.float(), size=(patch, patch), mode="bicubic",
                                    align_corners=False)
            resized = resized.permute(0, 2, 3, 1).reshape(patch * patch, -1).to(table.dtype)
            self._position_cache[key] = torch.cat([table[:1], resized], dim=0).detach()
        return self._position_cache[key]

    def forward(self, tokens: torch.Tensor, context: "RoutingContext") -> torch.Tensor:
        """Encode (batch, P², D) tokens of one modality into (batch, output_dim) features in
        the compute dtype. ``tokens`` are cast to the compute dtype first."""
        patch = int(round(math.sqrt(tokens.shape[1])))
        position = self.position_embedding(patch)  # outside the compiled region: cached
        run = self._compiled or self._encode
        return run(tokens.to(self.compute_dtype), position, context.pattern_embedding,
                   context.modality_embedding, context.modality_index)

    def encode_tokens(self, tokens: torch.Tensor, context: "RoutingContext") -> torch.Tensor:
        """Encode (batch, P², D) tokens of one modality into per-token features
        (batch, P², output_dim) in the compute dtype (the tile model kind): the last block's
        pixel tokens through the frozen ``ln_post`` and ``proj``, token by token; the CLS
        token is dropped. ``tokens`` are cast to the compute dtype first."""
        patch = int(round(math.sqrt(tokens.shape[1])))
        position = self.position_embedding(patch)
        run = self._compiled_tokens or self._encode_tokens
        return run(tokens.to(self.compute_dtype), position, context.pattern_embedding,
                   context.modality_embedding, context.modality_index)

    def _blocks(self, tokens: torch.Tensor, position: torch.Tensor,
                context: "RoutingContext") -> torch.Tensor:
        """The last block's output (batch, 1 + P², D): CLS + tokens through the tower."""
        visual = self.visual
        batch = tokens.shape[0]
        cls = visual.class_embedding.expand(batch, 1, -1)
        x = visual.ln_pre(torch.cat([cls, tokens], dim=1) + position)
        for index, block in enumerate(visual.transformer.resblocks):
            x = x + block.ls_1(frozen_attention(block, block.ln_1(x)))
            z = block.ln_2(x)
            update = block.ls_2(block.mlp(z))
            if index >= self.first_adapted and self.adapters:
                update = update + self.adapters[index - self.first_adapted](z, context)
            x = x + update
        return x

    def _encode_tokens(self, tokens: torch.Tensor, position: torch.Tensor,
                       pattern_embedding: Optional[torch.Tensor],
                       modality_embedding: Optional[torch.Tensor],
                       modality_index: int) -> torch.Tensor:
        context = RoutingContext(pattern_embedding, modality_embedding, modality_index)
        x = self._blocks(tokens, position, context)
        # ln_post is per token, so applying it to the pixel tokens is what the tower does to
        # the CLS token before pooling; proj maps each token into the feature space f_m.
        features = self.visual.ln_post(x[:, 1:])
        if self.visual.proj is not None:
            features = features @ self.visual.proj
        return features

    def _encode(self, tokens: torch.Tensor, position: torch.Tensor,
                pattern_embedding: Optional[torch.Tensor],
                modality_embedding: Optional[torch.Tensor], modality_index: int) -> torch.Tensor:
        context = RoutingContext(pattern_embedding, modality_embedding, modality_index)
        visual = self.visual
        x = self._blocks(tokens, position, context)
        if self._pool_class_token:
            pooled = visual.ln_post(x[:, 0])
        else:
            pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled


class MceFusion(nn.Module):
    """MCE's fusion of the M feature tokens before the head: a learned modality embedding
    added to each f_m (zeros where the modality is missing), then a 2-layer Transformer
    encoder (width = feature size, 4 heads, pre-norm, no dropout) over the M tokens."""

    HEADS = 4
    LAYERS = 2

    def __init__(self, modalities: int, width: int) -> None:
        super().__init__()
        if width % self.HEADS:
            raise MamolInputError(
                f"MCE's fusion needs a feature size divisible by {self.HEADS}, got {width}.")
        self.modality_embedding = nn.Parameter(torch.randn(modalities, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, self.HEADS, dim_feedforward=2 * width,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, self.LAYERS, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, M, D) feature tokens -> (batch, M, D) fused tokens."""
        return self.encoder(features + self.modality_embedding)


class CompletionPredictor(nn.Module):
    """MCE's cross-modal completion of one target modality: a 2-layer MLP from the fused
    tokens of the other M − 1 modalities to the target's feature."""

    def __init__(self, others: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(others * width, width), nn.GELU(),
                                 nn.Linear(width, width))

    def forward(self, others: torch.Tensor) -> torch.Tensor:
        """(batch, M − 1, D) -> (batch, D)."""
        return self.net(others.flatten(1))


class MamolModel(nn.Module):
    """Token embeddings + MaMOL encoder + pattern/modality embeddings + linear head."""

    def __init__(self, modalities: Sequence[ModalitySpec], class_count: int,
                 visual: nn.Module, config: AdapterConfig = AdapterConfig()) -> None:
        super().__init__()
        if not modalities:
            raise MamolInputError("A MaMOL model needs at least one modality.")
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise MamolInputError(f"Modality names must be unique, got {names}.")
        if class_count < 2:
            raise MamolInputError(f"A classifier needs at least 2 classes, got {class_count}.")
        if ModelKind(config.kind) is ModelKind.TILE and config.mce:
            raise MamolInputError("MCE is available for the pixel model kind only.")
        self.modalities = list(modalities)
        self.config = config
        self.encoder = MamolEncoder(visual, len(modalities), config)
        width = self.encoder.width
        self.token_embeddings = nn.ModuleDict(
            {m.name: ModalityTokenEmbedding(m.bands, width) for m in modalities})
        if config.experts.dynamic:
            self.pattern_embedding = nn.Embedding(2 ** len(modalities), config.embedding_dim)
            self.modality_embedding = nn.Embedding(len(modalities), config.embedding_dim)
        else:
            self.pattern_embedding = None
            self.modality_embedding = None
        self.head = nn.Linear(len(modalities) * self.encoder.output_dim, class_count)
        feature = self.encoder.output_dim
        if config.mce:
            # MCE (seed 001): fusion before the head; per-modality auxiliary heads and
            # completion predictors, trained and stored but unused at inference
            self.fusion = MceFusion(len(modalities), feature)
            self.auxiliary_heads = nn.ModuleList(
                nn.Linear(feature, class_count) for _ in modalities)
            self.completion = nn.ModuleList(
                CompletionPredictor(len(modalities) - 1, feature) for _ in modalities) \
                if len(modalities) > 1 else None
        else:
            self.fusion = self.auxiliary_heads = self.completion = None

    @property
    def full_pattern(self) -> int:
        """The pattern code with every modality present."""
        return 2 ** len(self.modalities) - 1

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.compute_dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> "MamolModel":
        """Hold the frozen tower in ``dtype`` (its activations follow); trainable tensors and
        hence the optimiser state stay fp32. Returns the model."""
        self.encoder.set_compute_dtype(dtype)
        return self

    @property
    def kind(self) -> ModelKind:
        """The model kind: per-pixel windows or dense tiles."""
        return ModelKind(self.config.kind)

    def _routing_context(self, index: int, pattern: torch.Tensor) -> RoutingContext:
        return RoutingContext(
            pattern_embedding=(self.pattern_embedding(pattern)
                               if self.pattern_embedding is not None else None),
            modality_embedding=(self.modality_embedding.weight[index]
                                if self.modality_embedding is not None else None),
            modality_index=index)

    def encode(self, index: int, window: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """Feature f_m (compute dtype) of modality ``index`` for samples that have it."""
        context = self._routing_context(index, pattern)
        tokens = self.token_embeddings[self.modalities[index].name](window)
        return self.encoder(tokens, context)

    def encode_tiles(self, index: int, tiles: torch.Tensor,
                     tile_pattern: torch.Tensor) -> torch.Tensor:
        """Per-token features (batch, P², output_dim), compute dtype, of modality ``index``
        for tiles that have it somewhere; the router sees ``tile_pattern`` (batch,)."""
        context = self._routing_context(index, tile_pattern)
        tokens = self.token_embeddings[self.modalities[index].name](tiles)
        return self.encoder.encode_tokens(tokens, context)

    def forward(self, windows: Mapping[str, torch.Tensor], pattern: torch.Tensor) -> torch.Tensor:
        """fp32 class logits (batch, K): :meth:`classify_features` of :meth:`features`."""
        return self.classify_features(self.features(windows, pattern))

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """fp32 class logits from the (batch, M, D) features (zeros where missing): the
        head over their concatenation, or with MCE over the fused tokens'."""
        if self.fusion is not None:
            features = self.fusion(features)
        return self.head(features.flatten(1))

    def features(self, windows: Mapping[str, torch.Tensor], pattern: torch.Tensor) -> torch.Tensor:
        """fp32 features f_m (batch, M, D), a zero row where modality m is missing.

        Args:
            windows: modality name -> (batch, bands, P, P) normalised fp32 windows. A
                modality absent from every sample may be left out; values of samples where
                the pattern marks it missing are never read.
            pattern: (batch,) int64 bitmask, bit m set = modality m present. Pass it on the
                CPU: which samples each modality encodes is then decided on the host and the
                forward never waits for the GPU (a pattern on the GPU is copied back once).
        """
        if self.kind is ModelKind.TILE:
            raise MamolInputError(
                "This model is of the tile kind: it classifies the pixels of whole tiles "
                "(forward_tiles), not one window per pixel.")
        on_host = pattern.cpu()
        pattern_device = to_device(on_host, self.head.weight.device)
        features = [self._encode_where(index, windows, ((on_host >> index) & 1).bool(),
                                       pattern_device, self.encode, (self.encoder.output_dim,))
                    for index in range(len(self.modalities))]
        return torch.stack(features, dim=1)

    def _encode_where(self, index: int, windows: Mapping[str, torch.Tensor],
                      present: torch.Tensor, pattern_device: torch.Tensor,
                      encode, shape: Tuple[int, ...]) -> torch.Tensor:
        """fp32 (batch, *shape): ``encode(index, window, pattern)`` of modality ``index`` for
        the samples where ``present`` (host bool, (batch,)) is set, zeros elsewhere; only
        those samples run through the encoder."""
        batch = present.shape[0]
        count = int(present.sum())
        if count == 0:
            return self.head.weight.new_zeros(batch, *shape)
        name = self.modalities[index].name
        if name not in windows:
            raise MamolInputError(
                f"The pattern marks modality '{name}' present but no window was given for it.")
        window = windows[name]
        if count == batch:
            return encode(index, window, pattern_device).float()
        rows = to_device(torch.nonzero(present, as_tuple=True)[0], self.head.weight.device)
        encoded = encode(index, window.index_select(0, rows),
                         pattern_device.index_select(0, rows))
        return self.head.weight.new_zeros(batch, *shape).index_copy(0, rows, encoded.float())

    def tile_pattern(self, pixel_patterns: torch.Tensor) -> torch.Tensor:
        """(batch,) int64: the pattern of each tile (batch, P, P) of pixel patterns, the union
        (bitwise OR) of the modalities present at any of its pixels — the modalities whose
        encoder pass runs for the tile (see :meth:`forward_tiles`)."""
        flat = pixel_patterns.reshape(pixel_patterns.shape[0], -1)
        union = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        for bit in range(len(self.modalities)):
            union |= (((flat >> bit) & 1).amax(dim=1) << bit)
        return union

    def forward_tiles(self, windows: Mapping[str, torch.Tensor],
                      pixel_patterns: torch.Tensor) -> torch.Tensor:
        """fp32 class logits (batch, K, P, P) of every pixel of each tile (tile model kind).

        One encoder pass per tile and modality present somewhere in it: the last block's
        pixel tokens go through the frozen ``ln_post`` and ``proj`` one by one, the M
        modalities' token features are concatenated (zeros where missing) and the pixel
        model's linear head classifies each token.

        Missing pattern per pixel: modality m's pass is skipped for a tile where m is
        missing at every pixel; where it ran, its token features are zeroed at the pixels
        whose pattern marks m missing, so such a pixel is classified from the same feature
        layout as a pixel sample with that pattern.

        Decision (mixed tiles): the router's pattern e(pattern) for a tile is the union of
        the modalities present at any of its pixels, i.e. exactly the set of passes run for
        the tile. A pass is one token sequence whose attention mixes all its tokens, so its
        routing context is per pass, not per token: what a token's features hold depends on
        which modalities were encoded for the tile, and the union names those. Per-pixel
        differences inside the tile reach the head through the zeroing above. In a tile with
        one pattern everywhere (the common case away from coverage edges) the union is that
        pattern, the one the pixel model's router would see.

        Args:
            windows: modality name -> (batch, bands, P, P) normalised fp32 tiles. A modality
                missing in every tile may be left out; values at pixels marked missing are
                never needed (they enter a pass only as context of present pixels).
            pixel_patterns: (batch, P, P) int64 bitmask per pixel, bit m = modality m
                present. Pass it on the CPU (see :meth:`features`).
        """
        features = self.tile_features(windows, pixel_patterns)   # (batch, P², M, D)
        batch, tokens = features.shape[:2]
        patch = int(round(math.sqrt(tokens)))
        logits = self.head(features.flatten(2))                  # (batch, P², K)
        return logits.transpose(1, 2).reshape(batch, -1, patch, patch)

    def tile_features(self, windows: Mapping[str, torch.Tensor],
                      pixel_patterns: torch.Tensor) -> torch.Tensor:
        """fp32 per-token features (batch, P², M, D): zeros at the pixels where modality m is
        missing, and for the whole tile where it is missing at every pixel (not encoded)."""
        if self.kind is not ModelKind.TILE:
            raise MamolInputError("forward_tiles needs a model of the tile kind.")
        device = self.head.weight.device
        on_host = pixel_patterns.cpu().long()
        batch = on_host.shape[0]
        tokens = on_host.shape[1] * on_host.shape[2]
        per_pixel = on_host.reshape(batch, tokens)
        tile_pattern = self.tile_pattern(on_host)
        tile_pattern_device = to_device(tile_pattern, device)
        features: List[torch.Tensor] = []
        for index in range(len(self.modalities)):
            present_tile = ((tile_pattern >> index) & 1).bool()
            feature = self._encode_where(index, windows, present_tile, tile_pattern_device,
                                         self.encode_tiles, (tokens, self.encoder.output_dim))
            if bool(present_tile.any()):
                present_pixel = to_device(((per_pixel >> index) & 1).bool(), device)[..., None]
                feature = torch.where(present_pixel, feature, 0.0)
            features.append(feature)
        return torch.stack(features, dim=2)

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Only the tensors that training changes (everything but the frozen backbone)."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {name: tensor for name, tensor in self.state_dict().items() if name in names}

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

