"""The training engine on the tiny preset: encode once, sigma sampling, first-frame conditioning, resume,
early stop, gradient accumulation, the optimizer choice, and that it actually learns."""

from __future__ import annotations

import shutil
import statistics

import pytest
import torch
from diffusers import LTX2Pipeline

from ltx2trainer.errors import UserInputError
from ltx2trainer.model.lora import LORA_TARGET_MODULES, attach_lora
from ltx2trainer.model.presets import load_model
from ltx2trainer.pipeline.encode import encode_dataset, silence_latents
from ltx2trainer.pipeline.preprocess import PrepareOptions, prepare_dataset
from ltx2trainer.training import trainer as trainer_module
from ltx2trainer.training.data import TrainingData
from ltx2trainer.training.flow import prepare_flow_step
from ltx2trainer.training.probe import probe_loss
from ltx2trainer.training.timesteps import ShiftedLogitNormalSampler
from ltx2trainer.training.trainer import TrainConfig, train_lora
from tests.mediagen import TWO_CLIPS, make_image, prepared_dataset

FRAMES = 17
SIZE = 128  # pixels: a 4×4 latent grid, 3 latent frames → 48 video tokens


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two captioned clips with sound, prepared at 128×128, 17 frames."""
    root = tmp_path_factory.mktemp("train-data")
    return prepared_dataset(root, TWO_CLIPS, number_of_frames=FRAMES, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def encoded(dataset, tmp_path_factory):
    return encode_dataset(dataset, tmp_path_factory.mktemp("cache"), load_model("tiny"))


def ids(encoded) -> list[str]:
    return [sample.id for sample in encoded.samples]


def test_every_sample_and_caption_is_encoded_once_however_many_steps_run(dataset, tmp_path):
    components = load_model("tiny")
    calls = {"vae": 0, "audio_vae": 0, "text": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    components.vae.encode = counting("vae", components.vae.encode)
    components.audio_vae.encode = counting("audio_vae", components.audio_vae.encode)
    components.text_encoder.forward = counting("text", components.text_encoder.forward)

    encoded = encode_dataset(dataset, tmp_path / "cache", components)
    # per clip: the clip and its re-compressed first frame (video VAE), its audio; per caption: one text pass
    assert calls == {"vae": 4, "audio_vae": 2, "text": 2}
    assert (encoded.samples_encoded, encoded.texts_encoded) == (2, 2)
    train_lora(components, TrainingData.load(encoded), TrainConfig(number_of_steps=25, rank=8), tmp_path / "ck",
               sample_ids=ids(encoded))
    again = encode_dataset(dataset, tmp_path / "cache", components)
    assert calls == {"vae": 4, "audio_vae": 2, "text": 2}  # training and a second encode computed nothing
    assert (again.samples_reused, again.texts_reused, again.samples_encoded) == (2, 2, 0)


def test_cached_latents_have_the_real_topology(encoded):
    sample = TrainingData.load(encoded).samples[0]
    assert sample["video"].shape == (8, 3, SIZE // 32, SIZE // 32)  # 8x temporal, 32x spatial compression
    assert sample["first_frame"].shape == (8, 1, SIZE // 32, SIZE // 32)
    assert sample["audio"].shape == (round(FRAMES / 25 * 25), 128)  # 25 latents per second, 128 wide
    assert sample["video_context"].shape[0] == sample["mask"].shape[0] == 64


def test_lora_covers_all_six_attention_kinds_and_both_feed_forwards():
    components = load_model("tiny")
    attach_lora(components.transformer, rank=8)
    block = components.transformer.transformer_blocks[0]
    for attention in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"):
        for projection in ("to_q", "to_k", "to_v"):
            assert hasattr(getattr(getattr(block, attention), projection), "lora_A"), (attention, projection)
        assert hasattr(getattr(block, attention).to_out[0], "lora_A")
    for ff in (block.ff, block.audio_ff):
        assert hasattr(ff.net[0].proj, "lora_A") and hasattr(ff.net[2], "lora_A")
    config = components.transformer.peft_config["default"]
    assert config.r == config.lora_alpha == 8 and set(config.target_modules) == set(LORA_TARGET_MODULES)


def test_sigma_shift_grows_with_the_token_count():
    sampler = ShiftedLogitNormalSampler()
    generator = torch.Generator().manual_seed(0)
    big = sampler.sample(20_000, 6144, generator)
    small = sampler.sample(20_000, 126, generator)
    assert 0 < float(big.min()) and float(big.max()) <= 1
    # medians of ltx-trainer's sampler (timestep_samplers.py): 0.876 for 6144 tokens, 0.619 for 126
    assert float(big.median()) == pytest.approx(0.876, abs=0.02)
    assert float(small.median()) == pytest.approx(0.619, abs=0.02)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_first_frame_conditioning_probability_zero_never_one_always(encoded, p):
    data = TrainingData.load(encoded)
    batch = data.batch([0, 1])
    frame_tokens = (SIZE // 32) ** 2
    for seed in range(5):
        flow = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(seed),
                                 first_frame_p=p)
        timesteps, mask = flow.model_kwargs["timestep"], flow.video_loss_mask
        sigma = flow.video_sigma[:, None] * 1000
        if p == 0.0:
            assert not flow.conditioned.any()
            assert torch.allclose(timesteps, sigma.expand_as(timesteps)) and bool(mask.all())
        else:
            assert flow.conditioned.all()
            clean = LTX2Pipeline._pack_latents(batch.first_frame)
            assert torch.equal(flow.model_kwargs["hidden_states"][:, :frame_tokens], clean)
            assert not timesteps[:, :frame_tokens].any() and not mask[:, :frame_tokens].any()
            assert torch.allclose(timesteps[:, frame_tokens:], sigma.expand(-1, timesteps.shape[1] - frame_tokens))
            assert bool(mask[:, frame_tokens:].all())


def test_audio_sigma_is_shared_or_independent_as_configured(encoded):
    batch = TrainingData.load(encoded).batch([0, 1])
    shared = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                               first_frame_p=0, audio_sigma_mode="shared")
    assert torch.equal(shared.model_kwargs["audio_sigma"], shared.model_kwargs["sigma"])
    independent = prepare_flow_step(batch, ShiftedLogitNormalSampler(), torch.Generator().manual_seed(1),
                                    first_frame_p=0, audio_sigma_mode="independent")
    assert not torch.equal(independent.model_kwargs["audio_sigma"], independent.model_kwargs["sigma"])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_five_steps_resume_five_steps_equals_ten_straight(encoded, tmp_path, accumulation):
    config = TrainConfig(number_of_steps=10, learning_rate=1e-3, rank=8, seed=3,
                         gradient_accumulation_steps=accumulation)
    straight = train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path / "a",
                          sample_ids=ids(encoded))

    class Crash(Exception):
        pass

    def crash_after_five(info):
        if info.step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path / "b",
                   sample_ids=ids(encoded), on_step=crash_after_five)
    resumed = train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path / "b",
                         sample_ids=ids(encoded))
    assert resumed.resumed_from == 5 and resumed.steps_done == 10
    assert straight.lora_state.keys() == resumed.lora_state.keys()
    for key, value in straight.lora_state.items():
        torch.testing.assert_close(resumed.lora_state[key], value, rtol=1e-5, atol=1e-6)
    assert resumed.losses == pytest.approx(straight.losses[5:], rel=1e-5)


def test_raising_from_on_step_stops_cleanly_with_a_checkpoint(encoded, tmp_path):
    seen = []

    def stop_at_three(info):
        seen.append((info.step, info.total))
        assert info.loss > 0 and info.lr > 0 and info.elapsed_s >= 0
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(load_model("tiny"), TrainingData.load(encoded), TrainConfig(number_of_steps=50, rank=8),
                   tmp_path, sample_ids=ids(encoded), on_step=stop_at_three)
    assert seen == [(1, 50), (2, 50), (3, 50)]
    assert (tmp_path / "step_000003" / "lora.safetensors").exists()


def test_checkpoints_are_kept_every_k_steps_newest_two(encoded, tmp_path):
    train_lora(load_model("tiny"), TrainingData.load(encoded),
               TrainConfig(number_of_steps=12, rank=8, checkpoint_every=3, keep_checkpoints=2), tmp_path,
               sample_ids=ids(encoded))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000006", "step_000009"]


def test_the_step_hook_hears_of_a_checkpoint_before_it_is_saved(encoded, tmp_path):
    seen = []

    def on_step(info):  # what the worker bills must be recorded before a resume could start after this step
        seen.append((info.step, info.checkpoint_after, (tmp_path / f"step_{info.step:06d}").exists()))

    train_lora(load_model("tiny"), TrainingData.load(encoded),
               TrainConfig(number_of_steps=7, rank=8, checkpoint_every=3), tmp_path, sample_ids=ids(encoded),
               on_step=on_step)
    assert [(step, after) for step, after, _ in seen] == [
        (1, False), (2, False), (3, True), (4, False), (5, False), (6, True), (7, False)]
    assert not any(exists for _, _, exists in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000006"]


def test_published_checkpoints_are_saved_at_the_union_of_both_intervals_and_handed_over(encoded, tmp_path):
    seen, published = [], []
    config = TrainConfig(number_of_steps=8, rank=8, checkpoint_every=3, publish_every=4, keep_checkpoints=0)
    train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path, sample_ids=ids(encoded),
               on_step=lambda info: seen.append((info.step, info.checkpoint_after)),
               on_checkpoint=lambda step, checkpoint: published.append((step, checkpoint.lora_file.exists())))
    assert [step for step, after in seen if after] == [3, 4, 6]  # never the last step: that is the final output
    assert published == [(4, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000004", "step_000006"]
    # a run resumed from a published step hands it over again first (its publishing may not have happened)
    shutil.rmtree(tmp_path / "step_000006")
    again = []
    resumed = train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path, sample_ids=ids(encoded),
                         on_checkpoint=lambda step, checkpoint: again.append(step))
    assert resumed.resumed_from == 4 and again == [4]


def test_a_checkpoint_of_other_settings_is_not_resumed(encoded, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_lora(load_model("tiny"), TrainingData.load(encoded), TrainConfig(number_of_steps=10, rank=8),
                   tmp_path, sample_ids=ids(encoded), on_step=lambda i: (_ for _ in ()).throw(KeyboardInterrupt))
    other = train_lora(load_model("tiny"), TrainingData.load(encoded), TrainConfig(number_of_steps=4, rank=16),
                       tmp_path, sample_ids=ids(encoded))
    assert other.resumed_from is None and other.steps_done == 4


def test_training_lowers_a_held_out_probe_loss_and_pulls_samples_towards_the_data(encoded, tmp_path):
    data = TrainingData.load(encoded)
    components = load_model("tiny")
    before = probe_loss(components, data)
    caption_prompt = data.samples[0]
    baseline = _sample_latents(components, caption_prompt)
    train_lora(components, data, TrainConfig(number_of_steps=150, learning_rate=2e-3, rank=16,
                                             first_frame_conditioning_p=0.0), tmp_path, sample_ids=ids(encoded))
    after = probe_loss(components, data)
    assert after < 0.8 * before, (before, after)

    trained = _sample_latents(components, caption_prompt)
    target = data.samples[0]["video"]
    error_without = float((baseline - target).pow(2).mean())
    error_with = float((trained - target).pow(2).mean())
    assert error_with < 0.8 * error_without, (error_without, error_with)


def _sample_latents(components, sample) -> torch.Tensor:
    """Normalised video latents the pipeline generates for a training sample's caption (no guidance)."""
    from ltx2trainer.model.encoders import encode_prompts

    pipe = components.pipeline()
    captions = {"colour bars with a tone", "a moving test pattern"}
    # find this sample's caption by matching its cached text context
    for caption in sorted(captions):
        embeds, mask = encode_prompts(components, [caption])
        from ltx2trainer.model.encoders import connect_prompts

        if torch.allclose(connect_prompts(components, embeds, mask)[0][0], sample["video_context"], atol=1e-5):
            break
    latents = pipe(
        prompt_embeds=embeds, prompt_attention_mask=mask, height=SIZE, width=SIZE, num_frames=FRAMES,
        frame_rate=25, num_inference_steps=8, guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0,
        audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
        max_sequence_length=components.max_sequence_length, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames
    vae = components.vae
    return LTX2Pipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)[0]


def test_image_datasets_train_without_audio_or_first_frame_conditioning(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b"):
        make_image(folder / f"{name}.png", size=(200, 150))
    prepare_dataset(folder, tmp_path / "ds", PrepareOptions(number_of_frames=FRAMES, width=SIZE, height=SIZE))
    components = load_model("tiny")
    encoded = encode_dataset(tmp_path / "ds", tmp_path / "cache", components)
    silence = silence_latents(components, tmp_path / "cache", 1, encoded.frame_rate)
    data = TrainingData.load(encoded, silence)
    assert not data.has_audio and data.samples[0]["video"].shape[1] == 1
    result = train_lora(components, data, TrainConfig(number_of_steps=6, rank=8, first_frame_conditioning_p=1.0),
                        tmp_path / "ck", sample_ids=ids(encoded))
    assert len(result.losses) == 6 and all(loss > 0 for loss in result.losses)


@pytest.mark.parametrize("base_precision", ["bf16", "int8"])
def test_gradient_checkpointing_gives_the_same_steps(encoded, tmp_path, base_precision):
    config = TrainConfig(number_of_steps=3, rank=8, base_precision=base_precision)
    plain = train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path / "a", sample_ids=ids(encoded))
    checkpointed = train_lora(load_model("tiny"), TrainingData.load(encoded),
                              TrainConfig(number_of_steps=3, rank=8, gradient_checkpointing=True,
                                          base_precision=base_precision), tmp_path / "b", sample_ids=ids(encoded))
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-4)


def test_compiled_blocks_give_the_same_steps_and_resume_uncompiled(encoded, tmp_path):
    """Regional compilation (`compile_blocks`) changes how fast a step runs, not what it computes: the same losses
    and LoRA as eager, and a checkpoint of a compiled run resumes without it (and the other way round)."""
    config = TrainConfig(number_of_steps=3, rank=8, gradient_checkpointing=True)
    eager = train_lora(load_model("tiny"), TrainingData.load(encoded), config, tmp_path / "a", sample_ids=ids(encoded))
    components = load_model("tiny")
    compiled_config = TrainConfig(number_of_steps=3, rank=8, gradient_checkpointing=True, compile_blocks=True)
    compiled = train_lora(components, TrainingData.load(encoded), compiled_config, tmp_path / "b",
                          sample_ids=ids(encoded))
    blocks = components.transformer.transformer_blocks
    assert all(block._compiled_call_impl is not None for block in blocks)  # really compiled, every block
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    for key, value in eager.lora_state.items():
        torch.testing.assert_close(compiled.lora_state[key], value, rtol=1e-4, atol=1e-6)
    assert compiled_config.fingerprint("tiny", ids(encoded)) == config.fingerprint("tiny", ids(encoded))


def test_same_seed_same_lora_other_seed_other_lora(encoded, tmp_path):
    def run(seed, folder):
        return train_lora(load_model("tiny"), TrainingData.load(encoded),
                          TrainConfig(number_of_steps=4, rank=8, seed=seed), tmp_path / folder,
                          sample_ids=ids(encoded)).lora_state

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_training_losses_are_reported_per_step(encoded, tmp_path):
    result = train_lora(load_model("tiny"), TrainingData.load(encoded), TrainConfig(number_of_steps=8, rank=8),
                        tmp_path, sample_ids=ids(encoded))
    assert len(result.losses) == 8 and statistics.fmean(result.losses) > 0


# --- gradient accumulation and the optimizer ----------------------------------------------------------------------


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(encoded, tmp_path, monkeypatch):
    """Same samples, sigmas and noise; the same gradients (so loss scaling is right: clipping is off here, and
    Adam alone would hide a scale error), the same loss, learning rates and LoRA."""
    real_make_optimizer = trainer_module.make_optimizer
    seen: dict[str, list] = {}

    def spying_make_optimizer(name, parameters, *, lr):
        optimizer = real_make_optimizer(name, parameters, lr=lr)
        grads = seen.setdefault("grads", [])
        seen.setdefault("fused", []).append(optimizer.defaults["fused"])
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: grads.append([p.grad.clone() for p in opt.param_groups[0]["params"]]))
        return optimizer

    monkeypatch.setattr(trainer_module, "make_optimizer", spying_make_optimizer)
    runs = {}
    for batch, accumulation in ((2, 1), (1, 2)):
        seen["grads"] = []
        infos = []
        result = train_lora(load_model("tiny"), TrainingData.load(encoded),
                            TrainConfig(number_of_steps=3, learning_rate=1e-3, rank=8, seed=3, batch_size=batch,
                                        gradient_accumulation_steps=accumulation, max_grad_norm=0.0),
                            tmp_path / f"{batch}x{accumulation}", sample_ids=ids(encoded), on_step=infos.append)
        runs[accumulation] = (seen["grads"], infos, result.lora_state)
    (grads_one, infos_one, lora_one), (grads_two, infos_two, lora_two) = runs[1], runs[2]
    assert seen["fused"] == [True, True]  # torch's fused AdamW, on the CPU too
    assert len(grads_one) == len(grads_two) == 3  # one optimizer step per step, whatever the accumulation
    for step_one, step_two in zip(grads_one, grads_two):
        assert any(bool(g.any()) for g in step_one)
        for g1, g2 in zip(step_one, step_two):
            torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-7)
    assert [i.loss for i in infos_two] == pytest.approx([i.loss for i in infos_one], rel=1e-5)
    assert [i.lr for i in infos_two] == [i.lr for i in infos_one]  # the schedule counts optimizer steps
    # AdamW divides each update by the root of its running squared gradient, so where a gradient is near zero
    # the float32 summation-order differences of the two ways (tested above at 1e-7) grow to ~1e-6 in a weight
    # after three steps (seen once: 1.09e-6 in one of 256 elements); 1e-5 still catches a wrong accumulation.
    for key, value in lora_one.items():
        torch.testing.assert_close(lora_two[key], value, rtol=1e-4, atol=1e-5)


def test_accumulation_changes_the_fingerprint_and_defaults_keep_old_checkpoints_resumable():
    config = TrainConfig(number_of_steps=10, rank=8, seed=3)
    assert config.fingerprint("tiny", ["b", "a"]) == "39fe50eed5850d2f"  # as before these settings existed
    for changed in ({"gradient_accumulation_steps": 2}, {"base_precision": "int8"}, {"optimizer": "adamw8bit"}):
        other = TrainConfig(number_of_steps=10, rank=8, seed=3, **changed)
        assert other.fingerprint("tiny", ["b", "a"]) != "39fe50eed5850d2f", changed
    for harmless in ({"compile_blocks": True}, {"offload_optimizer_for_validation": False}):  # how, not what
        other = TrainConfig(number_of_steps=10, rank=8, seed=3, **harmless)
        assert other.fingerprint("tiny", ["b", "a"]) == "39fe50eed5850d2f", harmless


def test_adamw8bit_is_refused_without_a_cuda_gpu_before_training(encoded, tmp_path):
    components = load_model("tiny")
    with pytest.raises(UserInputError) as caught:
        train_lora(components, TrainingData.load(encoded), TrainConfig(number_of_steps=2, optimizer="adamw8bit"),
                   tmp_path, sample_ids=ids(encoded))
    assert caught.value.code == "unsupported_hardware"
    assert caught.value.message == ("optimizer adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit AdamW has CUDA "
                                    "kernels only) and this run is on the CPU; use optimizer adamw")
    assert not getattr(components.transformer, "peft_config", None)  # refused before the LoRA was attached
