"""Configs of the post-training jobs: fine-tune / SFT, preference pairs, DPO, reward model, RL.

Every trainer job shares ``PostTrainConfig`` (a ``TrainJobConfig``: run, stage, workers, seed,
precision; the ``parallelism`` keys of pretraining, ``shared.training.parallel_config.ParallelismFields``;
plus what to start from, the data, the fine-tuning method and the ``train:`` loop) and adds its
algorithm's knobs, TRL style (``<algo>`` config beside ``<algo>`` trainer). The
prefs job samples rather than trains: ``PrefsJobConfig`` is a plain ``JobConfig``. Presets live in
``configs/{finetune,sft,prefs,dpo,reward,rl}/``; the shared names are in docs/architecture.md, Configs.

Parallelism in post-training (``shared.training.trl_worker`` maps it onto ``TrainingArguments``): ``ddp``
is the HF Trainer's own DDP; ``zero1/2/3`` the DeepSpeed dict of ``shared.training.deepspeed_config``;
``fsdp`` accelerate's FSDP2 plugin (``fully_shard`` per ``_no_split_modules`` block, full state dict on
save). ``activation_checkpointing`` and ``method.gradient_checkpointing`` ask for the same thing (either
turns it on): HF gradient checkpointing, or FSDP's own under fsdp with method=full. Refused
here, before any worker starts: ``parallelism=fsdp`` with ``method=qlora`` (4-bit bitsandbytes weights
are not sharded by FSDP2 here; use ddp or zero1/zero2 with qlora, or method=lora), plus what
``ParallelOptions.validate`` refuses (``fsdp_cpu_offload`` without CUDA, options of another strategy).
With ``num_workers=1`` the strategies run for real on one shard (useful for the offload options).
The old ``deepspeed: {zero_stage, offload_optimizer, offload_params}`` section is gone: a config that
sets it gets one error naming the ``parallelism`` key that replaces it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from shared.config import (ConfigError, JobConfig, Precision, TrainJobConfig, TrainLoopConfig, help_field,
                           require_positive)
from shared.data.instructions.builtin import SOURCE as BUILTIN_INSTRUCTIONS
from shared.training.finetune_config import MethodConfig
from shared.training.parallel_config import ParallelismFields

HF_SCHEDULES = ("cosine", "linear", "constant_with_warmup", "warmup_stable_decay")
REWARD_METHODS = ("full", "lora")
#: The removed ``deepspeed:`` section, and what replaces it (``from_dict`` names it in its error).
DEEPSPEED_RENAMED = ("parallelism=zero1|zero2|zero3 (deepspeed.zero_stage=N is now parallelism=zeroN, 0 is "
                     "parallelism=ddp; offload: zero_offload_optimizer / zero_offload_params)")
REWARD_METHOD_ERROR = ("the reward model supports method=full or method=lora (4-bit loading here is for causal "
                       "LMs; the reward model is a sequence classifier); set method.method=lora")


@dataclass
class PostTrainLoopConfig(TrainLoopConfig):
    """The ``train:`` section of a post-training job: the shared loop names plus the HF optimizer and the
    sequence length. The seed and the precision are the job's (top-level ``seed`` / ``precision``)."""

    SCHEDULES: ClassVar[tuple[str, ...]] = HF_SCHEDULES
    RENAMED: ClassVar[dict[str, str]] = {"seed": "seed", "precision": "precision"}

    max_steps: int = help_field(200, "optimizer steps")
    schedule: str = help_field("cosine", f"HF lr schedule: {list(HF_SCHEDULES)}")
    eval_every: int = help_field(50, "evaluate the held-out loss every N steps")
    optim: str = help_field("adamw_torch", "HF optimizer name (paged_adamw_8bit for QLoRA on a GPU); with "
                            "parallelism=zero1|2|3 the optimizer is DeepSpeed's AdamW (torch's implementation)")
    max_length: int = help_field(128, "tokens per sequence (prompt + response); longer ones are truncated")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("max_length",), "train.")


@dataclass
class PostTrainConfig(ParallelismFields, TrainJobConfig):
    """What every post-training trainer job needs."""

    RENAMED: ClassVar[dict[str, str]] = {"deepspeed": DEEPSPEED_RENAMED}

    stage: str = help_field("finetune", "stage name of the artifact this job writes")
    seed: int = help_field(1234, "seed of init, shuffling and sampling")
    precision: Precision = help_field(
        "fp32", "auto = bf16 where supported; fp32 keeps tiny CPU runs exact and comparable; bf16; fp16 (GPU)")
    init_from: str = help_field("cpt", "model to start from: an artifact name, an HF checkpoint dir or a hub id")
    data: str = help_field("builtin:instructions", "training data: builtin:instructions, hf:<dataset>, a jsonl "
                           "file, a text corpus (builtin:python-code ...) or a prefs artifact")
    max_examples: Optional[int] = help_field(None, "use at most this many training examples")
    eval_examples: int = help_field(200, "held-out examples for eval loss and the generation checks")
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "full / lora / qlora"})
    train: PostTrainLoopConfig = field(default_factory=PostTrainLoopConfig, metadata={"help": "optimizer and loop"})
    max_new_tokens: int = help_field(48, "generation budget of the after-training checks")

    @property
    def checkpointing(self) -> bool:
        """Activation checkpointing in force: ``activation_checkpointing`` or ``method.gradient_checkpointing``."""
        return self.activation_checkpointing or self.method.gradient_checkpointing

    def validate(self) -> None:
        super().validate()
        self.method.validate()
        self.train.validate()
        self.parallel_options().validate(self.use_gpu)
        if self.parallelism == "fsdp" and self.method.method == "qlora":
            raise ConfigError("parallelism=fsdp does not shard method.method=qlora's 4-bit bitsandbytes weights; use "
                              "parallelism=ddp or zero1|zero2 with qlora, or method.method=lora with fsdp")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples must be >= 1 or unset, got {self.max_examples}")
        if self.eval_examples < 0:
            raise ConfigError(f"eval_examples must be >= 0, got {self.eval_examples}")


@dataclass
class SFTJobConfig(PostTrainConfig):
    """Supervised fine-tuning (and plain fine-tuning on a text corpus) with TRL's SFTTrainer."""

    stage: str = help_field("sft", "stage name of the artifact this job writes")
    assistant_only_loss: bool = help_field(True, "chat data: loss on the assistant's tokens only (the reply "
                                           "and its <|end|>); text corpora always train on every token")
    packing: bool = help_field(False, "pack several examples into each max_length window (BFD packing)")
    replay: list[str] = field(default_factory=list, metadata={"help": (
        "chat data: text corpora replayed in the mix, every token trained (train documents only), e.g. "
        "[builtin:python-docs, builtin:python-code]: keeps the language the model was pretrained on "
        "(shared/training/replay.py)")})
    replay_fraction: float = help_field(0.0, "share of the SFT training tokens that are replayed text (0 = off)")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.replay_fraction < 1:
            raise ConfigError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if self.replay_fraction > 0 and not self.replay:
            raise ConfigError("replay_fraction > 0 needs replay: the text corpora to replay, e.g. "
                              "replay=[builtin:python-docs]")


@dataclass
class DPOJobConfig(PostTrainConfig):
    """Direct preference optimization with TRL's DPOTrainer."""

    stage: str = help_field("dpo", "stage name of the artifact this job writes")
    init_from: str = help_field("sft", "policy to start from (and, by default, the frozen reference)")
    reference: Optional[str] = help_field(None, "frozen reference model (default: init_from)")
    data: str = help_field("prefs", "preference pairs: a prefs artifact, hf:<dataset> or a jsonl file")
    beta: float = help_field(0.1, "DPO beta: strength of the KL anchor to the reference")
    loss_type: str = help_field("sigmoid", "TRL DPO loss: sigmoid (DPO), ipo, hinge, robust, ...")
    sft_weight: float = help_field(0.0, "add this times the NLL of the chosen reply (RPO); keeps the chosen "
                                   "likelihood from falling with the rejected one, which small models need")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ConfigError(f"sft_weight must be >= 0, got {self.sft_weight}")


@dataclass
class RewardJobConfig(PostTrainConfig):
    """A reward model (sequence classifier with one score) trained on preference pairs (TRL RewardTrainer)."""

    stage: str = help_field("reward", "stage name of the artifact this job writes")
    init_from: str = help_field("sft", "backbone of the reward model (its LM head is replaced by a score head)")
    data: str = help_field("prefs", "preference pairs: a prefs artifact, hf:<dataset> or a jsonl file")
    center_rewards_coefficient: Optional[float] = help_field(
        0.01, "weight of TRL's mean((r_chosen + r_rejected)^2) term that keeps rewards near zero (None = off); RL "
        "adds the reward to the checkers' score, so an unanchored scale would drown or ignore them")

    def validate(self) -> None:
        super().validate()
        if self.method.method not in REWARD_METHODS:
            raise ConfigError(f"{REWARD_METHOD_ERROR}, not {self.method.method!r}")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError(f"center_rewards_coefficient must be >= 0 or None, got {self.center_rewards_coefficient}")


@dataclass
class RLJobConfig(PostTrainConfig):
    """Online RL against a reward model: TRL GRPO (group-relative PPO-style clipped objective) or RLOO."""

    stage: str = help_field("rl", "stage name of the artifact this job writes")
    init_from: str = help_field("dpo", "policy to start from")
    reward_model: str = help_field("reward", "reward model artifact scoring each sampled completion")
    checker_weight: float = help_field(1.0, "also add the exact checkers' score (verifiable rewards) times this")
    algorithm: Literal["grpo", "rloo"] = help_field("grpo", "TRL trainer: grpo or rloo")
    num_generations: int = help_field(4, "completions sampled per prompt (the group); train.batch_size counts "
                                      "completions, so batch_size * grad_accum must be a multiple of it")
    max_completion_length: int = help_field(32, "rollout budget in tokens (a rollout also stops at <|end|>)")
    beta: float = help_field(0.04, "KL penalty to the starting policy (0 = no reference model is kept)")
    temperature: float = help_field(1.0, "sampling temperature of the rollouts")

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO/RLOO baselines compare completions of one prompt")
        per_generation = self.train.batch_size * self.train.grad_accum
        if per_generation % self.num_generations:
            raise ConfigError(f"train.batch_size * train.grad_accum = {per_generation} completions per generation "
                              f"round is not a multiple of num_generations={self.num_generations}; every prompt "
                              "needs its whole group: make batch_size a multiple of num_generations")
        for name, ok, need in (("max_completion_length", self.max_completion_length >= 1, ">= 1"),
                               ("temperature", self.temperature > 0, "> 0"), ("beta", self.beta >= 0, ">= 0"),
                               ("checker_weight", self.checker_weight >= 0, ">= 0")):
            if not ok:
                raise ConfigError(f"{name} must be {need}, got {getattr(self, name)}")


@dataclass
class PrefsJobConfig(JobConfig):
    """Preference pairs sampled from a model's own outputs and scored (checkers, rules, reward model)."""

    stage: str = help_field("prefs", "stage name of the dataset artifact this job writes")
    init_from: str = help_field("sft", "the model whose outputs are sampled")
    data: str = help_field("builtin:instructions", "prompts: instruction examples whose checks score responses")
    num_prompts: int = help_field(1000, "prompts to sample from the training split")
    samples_per_prompt: int = help_field(4, "responses sampled per prompt")
    include_greedy: bool = help_field(True, "also generate the greedy reply and reject it first among equals: "
                                      "the pairs then target the mistakes greedy decoding makes")
    temperature: float = help_field(1.0, "sampling temperature")
    top_p: float = help_field(0.95, "nucleus sampling")
    max_new_tokens: int = help_field(48, "response budget in tokens")
    reward_model: Optional[str] = help_field(None, "also score with this reward model artifact when given")
    min_margin: float = help_field(0.5, "keep a pair only when chosen beats rejected by at least this")
    pairs_per_prompt: int = help_field(1, "at most this many pairs per prompt, each a distinct (chosen, rejected) "
                                       "couple of distinct replies; 1 = the best reply against the worst only")
    balance_refusals: bool = help_field(False, "keep as many pairs whose chosen reply is a refusal as pairs whose "
                                        "rejected one is (a seeded subset of the larger side): DPO can then learn "
                                        "when to refuse, not to refuse more or less overall")
    reference_fallback: bool = help_field(False, "when no sample passes the check, use the dataset's reference "
                                          "answer as chosen (recorded per pair as chosen_source); off = "
                                          "on-policy pairs only")
    hard_safety_prompts: int = help_field(0, "extra training prompts from the hard safety set's training items "
                                          "(indirect harmful requests and borderline ones, half each, at most the "
                                          "pool's 470; builtin:instructions only): pairs where the model is least sure")
    batch_size: int = help_field(32, "prompts per generation batch")
    num_workers: int = help_field(1, "Ray Data inference actors")
    cpus_per_worker: int = help_field(2, "CPU cores per inference actor")
    use_gpu: bool = help_field(False, "each inference actor holds its model on a GPU of its own (one GPU per actor)")
    seed: int = help_field(1234, "seed of prompt choice and sampling")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("num_prompts", "samples_per_prompt", "max_new_tokens", "batch_size", "num_workers",
                               "pairs_per_prompt"))
        if self.samples_per_prompt < 2 and not self.reference_fallback:
            raise ConfigError("samples_per_prompt must be >= 2 to form pairs (or enable reference_fallback)")
        if not 0 < self.temperature:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.hard_safety_prompts < 0:
            raise ConfigError(f"hard_safety_prompts must be >= 0, got {self.hard_safety_prompts}")
        if self.hard_safety_prompts and self.data != BUILTIN_INSTRUCTIONS:
            raise ConfigError(f"hard_safety_prompts draws from {BUILTIN_INSTRUCTIONS}'s hard safety items, but data is "
                              f"{self.data!r}; set hard_safety_prompts=0 or data={BUILTIN_INSTRUCTIONS}")
