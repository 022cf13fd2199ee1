"""The Conformer-CTC baseline (torchaudio's Conformer): the Squeezeformer's interface and a trainable CTC path."""
import pytest
import torch

from mtp.registry import BACKBONES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return BACKBONES.get("conformer_ctc").build(num_classes=10, d_model=32, n_layers=2, n_heads=4,
                                                conv_kernel_size=7)


def test_registered_for_speech_recognition():
    spec = BACKBONES.get("conformer_ctc")
    assert spec.tasks == ("speech_recognition",) and spec.sample_rate == 16000 and not spec.weights


def test_waveform_to_log_probs_with_subsampled_lengths(small):
    small.eval()
    waveform = torch.randn(2, 16000)
    with torch.no_grad():
        features, feature_lengths = small.extract_features(waveform, torch.tensor([16000, 8000]))
        log_probs, lengths = small(features, feature_lengths)
        again, _ = small.transcribe_logits(waveform, torch.tensor([16000, 8000]))
    assert feature_lengths.tolist() == [100, 50]
    assert lengths.tolist() == [25, 13]                       # ((L - 1) // 2 + 1), twice
    assert log_probs.shape == (2, 25, 11) and small.blank_index == 10
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 25))
    torch.testing.assert_close(again, log_probs)
    # a batch whose longest item is shorter than the padded tensor ends at that item
    with torch.no_grad():
        cropped, cropped_lengths = small(features, torch.tensor([60, 50]))
    assert cropped.shape[1] == int(cropped_lengths.max()) == 15


def test_ctc_training_step_updates_the_conformer(small):
    small.train()
    features, lengths = small.extract_features(torch.randn(2, 12000))
    log_probs, out_lengths = small(features, lengths)
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), torch.tensor([[1, 2, 3], [4, 5, 0]]),
                                        out_lengths, torch.tensor([3, 2]), blank=small.blank_index)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in small.conformer.parameters())
    small.zero_grad()


def test_refuses_inconsistent_settings():
    with pytest.raises(ValueError, match="must equal feat_in"):
        BACKBONES.get("conformer_ctc").build(feat_in=80, preprocessor={"features": 64})
    with pytest.raises(ValueError, match="features \\[batch, feat_in, time\\]"):
        BACKBONES.get("conformer_ctc").build(d_model=32, n_layers=1)(torch.randn(80, 100))
