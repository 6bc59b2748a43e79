"""Contrastive Predictive Coding (van den Oord et al. 2018), after CPC_audio (Rivière et al. 2020).

``CPCEncoder`` maps a waveform to encoded frames z (the convolutional encoder) and contexts c (the
autoregressive network). ``CPCLoss`` predicts z[t + k] from c[t] with one linear head per step k = 1..K and
scores each prediction against the true frame and N negatives drawn from the batch (InfoNCE).

Reverse mode (CPC_audio's ``--cpc_mode reverse``): the context network reads the frames backwards, so c[t]
summarises frames t .. F-1. The flip lives in ``CPCEncoder.forward`` around the context network (whose
output is flipped back, so every tensor a caller sees is in natural time order), and in ``CPCLoss``, which
flips c and z once more so that "predict k steps ahead" runs in reversed time: c[t] predicts z[t - k].

Precision: the model runs in float32 by default. bfloat16 autocast works (the loss's logits and softmax stay in
float32; see CPCLoss.forward for the one product that follows autocast) but only pays on CPUs with bf16 matrix
units (AMX / avx512_bf16); ``benchmarks/cpc_step.py`` measures the matmul rate of both dtypes so the trainer's
``precision`` can be chosen per machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jtm.audio import HOP, resample
from jtm.models.config import CPCConfig
from jtm.models.context import build_context
from jtm.models.encoders import DOWNSAMPLING, ConstantQSpectrum, build_encoder, receptive_field
from jtm.models.inference import Chunking, FramesFn, StepFn, run_array
from jtm.models.pretrained import (load_weights_into, read_pretrained_config, read_pretrained_weights,
                                   save_pretrained_files, WEIGHTS_NAME)
from jtm.errors import ModelFileError

ENCODER_FORMAT = "jtm-cpc-encoder"
ENCODER_FORMAT_VERSION = 1

# Least margin of frames computed on each side of an ``embed`` chunk and thrown away (see embed_margin_frames).
_EMBED_MARGIN_FRAMES = 8


def embed_margin_frames(config: CPCConfig) -> int:
    """Frames of margin on each side of an ``embed`` chunk: more than the encoder's receptive field (465
    samples for the conv stack, 706 for SincNet, ``gabor_kernel`` + 320 for Gabor), so chunk seams are exact."""
    return max(_EMBED_MARGIN_FRAMES, -(-receptive_field(config) // DOWNSAMPLING) + 1)


class CPCEncoder(nn.Module):
    """Waveform -> (z, c). Input (B, T) at ``config.sample_rate``; F = T // 160 frames."""

    def __init__(self, config: CPCConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.context = build_context(config)
        # Only a 'cqt' target needs its own bank (no parameters, nothing saved); 'frontend' reads the encoder's.
        self.target_spectrum = (ConstantQSpectrum(config.gabor_filters, config.gabor_kernel, config.sample_rate)
                                if config.target == "cqt" else None)
        self._embed_margin = embed_margin_frames(config)

    def contextualise(self, z: Tensor, state=None) -> tuple[Tensor, object]:
        """c (B, F, context_dim) from z (B, F, encoder_dim), in natural time order (see reverse mode above)."""
        if self.config.reverse:
            c, state = self.context(z.flip(1), state)
            return c.flip(1), state
        return self.context(z, state)

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """wave (B, T) -> z (B, F, encoder_dim), c (B, F, context_dim)."""
        z = self.encoder(wave)
        c, _ = self.contextualise(z)
        return z, c

    def features(self, wave: Tensor, layer: str = "context") -> Tensor:
        """wave (B, T) -> the frames of ``layer`` (B, F, config.layer_dim(layer)): c, z, [z, c] or the gabor
        encoder's log spectrum (see :data:`~jtm.models.config.FEATURE_LAYERS`); only what the layer needs runs."""
        self.config.layer_dim(layer)  # a clear error for an unknown layer, or 'spectrum' of a non-gabor model
        if layer == "spectrum":
            return self.encoder.spectrum(wave)
        if layer == "encoder":
            return self.encoder(wave)
        z, c = self(wave)
        return torch.cat([z, c], dim=-1) if layer == "both" else c

    def cpc_inputs(self, wave: Tensor, target_wave: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """wave (B, T) -> (targets (B, F, config.target_dim), c (B, F, context_dim)): what :class:`CPCLoss`
        scores, the frames c must tell apart, and the contexts that predict them.

        ``target_wave`` (B, T), with a spectral target ('frontend' or 'cqt') only: take the targets from this other
        view of the same windows (another rendering of the same moment, :mod:`jtm.data.views`) while c reads
        ``wave``; what c can predict of another view is what the two share, the notes rather than the timbre.

        ``target='z'`` (CPC) returns z. ``target='frontend'`` returns the gabor encoder's log filterbank frames,
        standardised per filter over the batch and detached. Why: a learned target moves towards whatever is
        easiest to predict; with z as target, 510 steps left z with less linearly readable pitch than the
        untrained encoder (docs/RESULTS.md). Fixed spectral targets keep pitch in what c must predict, as fixed
        or slowly moving targets do in HuBERT and data2vec. ``target='cqt'`` returns the same frames from a fixed
        constant-Q bank (:class:`~jtm.models.encoders.ConstantQSpectrum`), so any encoder, a raw-waveform conv
        stack included, can be asked to predict them; the encoder itself stays free of the filterbank.
        """
        if self.config.target == "z":
            if target_wave is not None:
                raise ValueError("a second view's targets need a spectral target, 'frontend' or 'cqt' (a learned "
                                 "z target of another view has nothing to anchor it)")
            return self(wave)
        if target_wave is not None and target_wave.shape != wave.shape:
            raise ValueError(f"target_wave must have wave's shape {tuple(wave.shape)}, got {tuple(target_wave.shape)}")
        if self.target_spectrum is not None:
            c, _ = self.contextualise(self.encoder(wave))
            with torch.no_grad():
                spectrum = self.target_spectrum(wave if target_wave is None else target_wave)
        else:
            spectrum = self.encoder.spectrum(wave)
            c, _ = self.contextualise(self.encoder.layers(spectrum))
            if target_wave is not None:
                with torch.no_grad():
                    spectrum = self.encoder.spectrum(target_wave)
        target = spectrum.detach()
        mean, std = target.mean(dim=(0, 1), keepdim=True), target.std(dim=(0, 1), keepdim=True)
        return (target - mean) / (std + 1e-5), c

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def embed(self, waveform, sample_rate: int, layer: str = "context", chunk_seconds: float = 60.0) -> np.ndarray:
        """Frame embeddings of one recording: float32 (F, D), F = (samples at 16 kHz) // 160.

        ``waveform``: numpy array or tensor, (T,) mono, or 2-D (channels, T) / (T, channels), mixed down to
        mono by averaging over the shorter axis. Resampled to ``config.sample_rate`` if needed.
        ``layer``: one of :data:`~jtm.models.config.FEATURE_LAYERS`: 'context' (c), 'encoder' (z), 'both'
        ([z, c], from one pass) or 'spectrum' (the gabor encoder's log filterbank). Runs in eval mode without
        gradients.

        Long inputs are processed by :func:`jtm.models.inference.run_chunked` in chunks of ``chunk_seconds``, so
        memory stays bounded (see :meth:`chunk_functions`):
        - the encoder sees each chunk plus a margin on both sides, so z is the same as in one pass
          (except with ``norm='instance'``, whose statistics are per chunk);
        - GRU/LSTM/RNN contexts carry their hidden state from chunk to chunk (backwards in reverse mode),
          which is exact;
        - the transformer attends within each chunk and its margins only (an approximation: its context is
          at most one chunk long, which is far longer than the training windows anyway).
        """
        dim = self.config.layer_dim(layer)  # a ConfigError (a ValueError) names an unknown layer
        audio = resample(_to_mono_float32(waveform), int(sample_rate), self.config.sample_rate)
        core = max(1, int(chunk_seconds * self.config.sample_rate) // HOP)
        chunking = Chunking(core=core, left=self._embed_margin, right=self._embed_margin, batch_size=1,
                            pad_end=False)
        was_training = self.training
        self.eval()
        try:
            if layer in ("context", "both") and self.config.reverse and self.config.context != "transformer":
                z = run_array(audio, self.chunk_functions("encoder")[0], chunking, self.config.encoder_dim)
                c = self._context_backwards(z, core)
                return c if layer == "context" else np.concatenate([z, c], axis=1)
            frames_fn, step_fn = self.chunk_functions(layer)
            return run_array(audio, frames_fn, chunking, dim, step_fn=step_fn)
        finally:
            self.train(was_training)

    def chunk_functions(self, layer: str = "context") -> tuple[FramesFn, StepFn | None]:
        """How :func:`jtm.models.inference.run_chunked` computes ``layer`` chunk by chunk: (frames_fn, step_fn).

        z has a finite receptive field: the encoder runs on each chunk with its margin. A forward recurrent
        context continues from the previous chunk's final state (the step), which is exact; for ``both`` the
        step returns [z, c]. A transformer or a reverse-mode context has no state to carry forwards: the whole
        model runs on each chunk with its margin and the core is kept (an approximation; :meth:`embed` carries a
        reverse state backwards).
        """
        self.config.layer_dim(layer)  # a ConfigError (a ValueError) names an unknown layer
        device = next(self.parameters()).device

        def whole(wave: Tensor) -> Tensor:
            return self.features(wave.to(device), layer)

        if layer in ("encoder", "spectrum") or self.config.context == "transformer" or self.config.reverse:
            return whole, None

        def encode(wave: Tensor) -> Tensor:
            return self.encoder(wave.to(device))

        if layer == "context":
            return encode, self.contextualise

        def z_and_c(z: Tensor, state: object) -> tuple[Tensor, object]:
            c, state = self.contextualise(z, state)
            return torch.cat([z, c], dim=-1), state

        return encode, z_and_c

    def _context_backwards(self, z: np.ndarray, chunk: int) -> np.ndarray:
        """c (F, context_dim) of a reverse-mode recurrent context from all of z (F, encoder_dim): chunks from the
        end of the recording, the state flowing backwards from one to the next (exact)."""
        device = next(self.parameters()).device
        out = np.zeros((len(z), self.config.context_dim), dtype=np.float32)
        state = None
        for start in reversed(range(0, len(z), chunk)):
            piece = torch.from_numpy(z[start:start + chunk]).to(device)[None]
            c, state = self.contextualise(piece, state)
            out[start:start + chunk] = c[0].float().cpu().numpy()
        return out

    # ---------------------------------------------------------------- files
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/model.safetensors`` and ``directory/config.json`` (atomically)."""
        return save_pretrained_files(directory, self, self.config.to_dict(),
                                     format=ENCODER_FORMAT, version=ENCODER_FORMAT_VERSION)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "CPCEncoder":
        """Load a folder written by :meth:`save_pretrained`, or a pretraining run folder holding one in
        ``encoder/``. Never unpickles; a refused or damaged file raises ModelFileError naming it."""
        directory = Path(directory)
        if not (directory / "config.json").exists() and (directory / "encoder" / "config.json").exists():
            directory = directory / "encoder"
        raw = read_pretrained_config(directory, format=ENCODER_FORMAT, version=ENCODER_FORMAT_VERSION)
        try:  # strictly, with every size bounded, before any layer is allocated
            config = CPCConfig.from_dict(raw, directory / "config.json")
        except ValueError as e:  # ConfigError: names the file, the key and the problem
            raise ModelFileError(str(e)) from None
        model = cls(config)
        load_weights_into(model, read_pretrained_weights(directory), directory / WEIGHTS_NAME)
        return model.to(map_location).eval()


def _to_mono_float32(waveform) -> np.ndarray:
    if isinstance(waveform, Tensor):
        waveform = waveform.detach().cpu().numpy()
    audio = np.asarray(waveform, dtype=np.float32)
    if audio.ndim == 2:
        channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
        audio = audio.mean(axis=channel_axis, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"waveform must be (T,) or 2-D (channels, T)/(T, channels), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return audio


# -------------------------------------------------------------------- loss
class CPCOutput(NamedTuple):
    loss: Tensor           # scalar: mean over k of loss_per_step
    loss_per_step: Tensor  # (K,) InfoNCE cross-entropy per prediction step, averaged over batch and positions
    acc_per_step: Tensor   # (K,) fraction of (b, t) whose positive scores highest (no grad)


def sample_negatives(batch: int, frames: int, positions: int, negatives: int,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     *, negatives_from: str = "batch") -> Tensor:
    """Indices into the flattened (B * F) bank of encoded frames, uniform with replacement: (B, positions, N).

    ``negatives_from``: 'batch' draws from all B * F frames; 'window' draws negatives for window b from its
    own frames only, b F + [0, F): the same recording, so they cannot be told from the positive by timbre.
    Sampled once per loss call and shared by all K steps, as in CPC_audio. A negative may be the positive
    frame z[b, t + k] for some k (chance K / (B F) per draw, K / F with 'window'); :class:`CPCLoss` drops
    such a negative from that (b, t, k)'s softmax.
    """
    if negatives_from == "batch":
        return torch.randint(0, batch * frames, (batch, positions, negatives), generator=generator, device=device)
    if negatives_from == "window":
        idx = torch.randint(0, frames, (batch, positions, negatives), generator=generator, device=device)
        return idx + frames * torch.arange(batch, device=idx.device).view(-1, 1, 1)
    raise ValueError(f"negatives_from must be 'batch' or 'window', got {negatives_from!r}")


class CPCLoss(nn.Module):
    """InfoNCE over K future steps with per-step linear predictors (CPC_audio's unsupervised criterion).

    For F frames only the first T' = F - K contexts have all K targets. For position t and step k the
    logits are [s(pred_k(c_t), z_{t+k}), s(pred_k(c_t), z_neg_1), ..., s(pred_k(c_t), z_neg_N)] with
    s(a, b) = a . b / D (CPC_audio averages the product over features), and the label is 0.

    Computed without ever building (B, 1 + N, T', D) candidates: all K predictions are scored against the
    whole bank of B * F encoded frames in one matrix product, (B K T', D) @ (D, B F), and the positive and
    negative columns are gathered from it (at B = 8, F = 128, K = 12 that matrix is 45 MB in float32). When
    that product is bf16, the positives are taken as exact dot products instead (see forward).

    A negative whose index is the positive's (b F + t + k) is left out of that (b, t, k)'s softmax (its
    logit is -inf): it would always tie with the positive, so that row's loss could never fall below log 2.
    """

    def __init__(self, config: CPCConfig) -> None:
        super().__init__()
        self.config = config
        k, de, dc = config.predict_steps, config.target_dim, config.context_dim
        # K linear heads stored as one (K, De, Dc) tensor so all K predictions are a single GEMM
        self.weight = nn.Parameter(torch.empty(k, de, dc))
        self.bias = nn.Parameter(torch.zeros(k, de))
        bound = dc ** -0.5  # nn.Linear's default range
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def predict(self, c: Tensor) -> Tensor:
        """c (B, T', Dc) -> predictions (B, K, T', De), prediction k-1 for step k."""
        batch, positions, _ = c.shape
        k, de, dc = self.weight.shape
        p = F.linear(c, self.weight.reshape(k * de, dc), self.bias.reshape(k * de))  # (B, T', K De)
        return p.view(batch, positions, k, de).transpose(1, 2)

    def forward(self, c: Tensor, z: Tensor, negative_idx: Tensor | None = None,
                generator: torch.Generator | None = None) -> CPCOutput:
        """c (B, F, Dc) and the targets z (B, F, De) from :meth:`CPCEncoder.cpc_inputs`; negative_idx (B, F - K, N)
        into the B*F bank."""
        if c.dim() != 3 or z.dim() != 3 or c.shape[:2] != z.shape[:2]:
            raise ValueError(f"c and z must be (B, F, D) with the same B and F, got {tuple(c.shape)}, {tuple(z.shape)}")
        k_steps = self.config.predict_steps
        batch, frames, de = z.shape
        positions = frames - k_steps
        if positions < 1:
            raise ValueError(f"{frames} frames leave no position with {k_steps} future steps (need F > K)")
        if negative_idx is None:
            negative_idx = sample_negatives(batch, frames, positions, self.config.negatives, generator, z.device,
                                            negatives_from=self.config.negatives_from)
        elif negative_idx.shape[:2] != (batch, positions):
            raise ValueError(f"negative_idx must be (B, F - K, N) = ({batch}, {positions}, N), "
                             f"got {tuple(negative_idx.shape)}")
        # Logits and their softmax are float32, even under bf16 autocast: they are small differences of large dots.
        # The one exception is the negatives' product with the bank under bf16 autocast and the cosine score,
        # whose logits are bounded (|cos| / temperature), so bf16's relative rounding (2^-9) moves each by at
        # most 2^-8 / temperature; the positive, the most similar pair, stays exact. That product is most of the
        # demo model's step (B F = 1024 columns scored, 1 + N = 129 used), and bf16 does it 3x faster here.
        scores_dtype = torch.float32
        if (self.config.score == "cosine" and torch.is_autocast_enabled(z.device.type)
                and torch.get_autocast_dtype(z.device.type) == torch.bfloat16):
            scores_dtype = torch.bfloat16
        c, z = c.float(), z.float()
        if self.config.reverse:
            c, z = c.flip(1), z.flip(1)
        with torch.autocast(device_type=z.device.type, enabled=False):
            pred = self.predict(c[:, :positions])                                # (B, K, T', De)
            scale = 1.0 / de
            if self.config.score == "cosine":
                # Unit vectors: a frame cannot win by its norm alone (loud frames), which with the dot score
                # let a few directions carry the whole loss (the features' effective rank fell from 18 to 6).
                pred, z = F.normalize(pred, dim=-1), F.normalize(z, dim=-1)
                scale = 1.0 / self.config.temperature
            bank = z.reshape(batch * frames, de).to(scores_dtype)                # (B F, De)
            scores = (pred.to(scores_dtype).reshape(-1, de) @ bank.T).view(batch, k_steps, positions, batch * frames)
            # column of the positive z[b, t + k] in the bank: b F + t + k
            t = torch.arange(positions, device=z.device)
            steps = torch.arange(1, k_steps + 1, device=z.device)
            b = torch.arange(batch, device=z.device)
            pos_idx = (b.view(-1, 1, 1) * frames + steps.view(1, -1, 1) + t.view(1, 1, -1)).unsqueeze(-1)
            neg_idx = negative_idx.unsqueeze(1).expand(batch, k_steps, positions, negative_idx.shape[-1])
            if scores_dtype == torch.float32:
                positive = scores.gather(3, pos_idx) * scale                         # (B, K, T', 1)
            else:
                # exact, not from the bf16 product: z[b, t + k] as a strided view of z, (B, K, T', De), no copy
                future = z[:, 1:].unfold(1, positions, 1).transpose(2, 3)
                positive = (pred * future).sum(dim=-1, keepdim=True) * scale
            # -inf drops a negative that is the positive itself: exp(-inf) = 0 in the softmax, zero gradient,
            # and it can never outscore the (finite) positive in the accuracy
            negative = (scores.gather(3, neg_idx).float() * scale).masked_fill(neg_idx == pos_idx, float("-inf"))
            logits = torch.cat([positive, negative], dim=3)                       # (B, K, T', 1 + N)
            # cross-entropy with label 0 = logsumexp - positive logit
            nll = torch.logsumexp(logits, dim=3) - logits[..., 0]
            loss_per_step = nll.mean(dim=(0, 2))
            with torch.no_grad():
                acc_per_step = (logits.argmax(dim=3) == 0).float().mean(dim=(0, 2))
        return CPCOutput(loss_per_step.mean(), loss_per_step, acc_per_step)
