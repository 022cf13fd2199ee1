"""Backbones: plain nn.Modules, and the registry of their named variants.

Each entry is a typed BackboneSpec (mtp.registry), data only: import target, constructor preset, tasks, released
weights (URL, sha256, state-dict key, licence), detection from a state dict, capabilities, and the metric protocol
its paper used. Listing them imports nothing.
"""
from mtp.registry import BACKBONES, WeightsSpec

_IMDN_URL = "https://github.com/Zheng222/IMDN/raw/master/checkpoints/IMDN_x{s}.pth"
_HAT_PAGE = "https://github.com/XPixelGroup/HAT#how-to-test (the authors' Google Drive / Baidu links)"
_SR = ["super_resolution", "denoising", "jpeg_restoration"]
_SR_DETECT = "mtp.backbones.sr_detect:detect"


def _hat_releases(prefix: str, scales=(2, 3, 4), suffix: str = "") -> dict:
    """HAT's releases have no direct URL: the spec names the file and the page to fetch it from."""
    return {f"x{s}": WeightsSpec(filename=f"{prefix}_SRx{s}{suffix}.pth", page=_HAT_PAGE, key="params_ema",
                                 licence="Apache-2.0", options={"scale": s}) for s in scales}

# HAT (Chen et al., CVPR 2023): official option files; the scale is set by the task (`upscale`).
_HAT_COMMON = dict(in_chans=3, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                   overlap_ratio=0.5, mlp_ratio=2, img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv")
BACKBONES.register("hat_s", "mtp.backbones.hat:HAT",
                   dict(_HAT_COMMON, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=24,
                        squeeze_factor=24), tasks=_SR, weights_key="params_ema", protocol="basicsr",
                   weights=_hat_releases("HAT-S"), detect=_SR_DETECT, size_multiple=16, family="hat",
                   description="HAT-S (9.6M params), hybrid attention transformer, Chen et al. 2023")
BACKBONES.register("hat", "mtp.backbones.hat:HAT",
                   dict(_HAT_COMMON, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6), tasks=_SR,
                   weights_key="params_ema", protocol="basicsr", weights=_hat_releases("HAT"), detect=_SR_DETECT,
                   size_multiple=16, family="hat",
                   description="HAT (20.8M params), Chen et al. 2023")
BACKBONES.register("hat_l", "mtp.backbones.hat:HAT",
                   dict(_HAT_COMMON, embed_dim=180, depths=[6] * 12, num_heads=[6] * 12), tasks=_SR,
                   weights_key="params_ema", protocol="basicsr", detect=_SR_DETECT, size_multiple=16, family="hat",
                   weights=_hat_releases("HAT-L", suffix="_ImageNet-pretrain"),
                   description="HAT-L (40.8M params), Chen et al. 2023")
BACKBONES.register("imdn", "mtp.backbones.imdn:IMDN", dict(in_nc=3, nf=64, num_modules=6, out_nc=3),
                   tasks=_SR, protocol="basicsr", detect=_SR_DETECT, size_multiple=1, bytes_per_element=4.0 * 64 * 20,
                   weights={"x2": WeightsSpec(_IMDN_URL.format(s=2), "740b39653592bd3f49955a21cd9e16f2d37f2c413368cc09327601b8fbe42ce1",
                                              options={"scale": 2}),
                            "x4": WeightsSpec(_IMDN_URL.format(s=4), "e660c38221147217a136debeb99eb304d62d9c0f73ac421ed66281b619719714",
                                              options={"scale": 4})},
                   description="IMDN (0.7M params), information multi-distillation network, Hui et al. 2019")

# Forecasting backbones take (seq_len, pred_len) and the number of variates from the data; their
# defaults are thuml's run.py defaults, and recipes set each paper's hyper-parameters.
_TS = ["forecasting"]
BACKBONES.register("itransformer", "mtp.backbones.itransformer:ITransformer", {}, tasks=_TS, protocol="thuml",
                   description="iTransformer (Liu et al., ICLR 2024): attention across variates")
BACKBONES.register("dlinear", "mtp.backbones.dlinear:DLinear", {}, tasks=_TS,
                   protocol="thuml", description="DLinear (Zeng et al., AAAI 2023): decomposition + linear")
BACKBONES.register("patchtst", "mtp.backbones.patchtst:PatchTST", {}, tasks=_TS, protocol="thuml",
                   description="PatchTST (Nie et al., ICLR 2023): patches as tokens, channel independence")
BACKBONES.register("autoformer", "mtp.backbones.autoformer:Autoformer", {}, tasks=_TS, protocol="thuml",
                   description="Autoformer (Wu et al., NeurIPS 2021): auto-correlation + decomposition")
BACKBONES.register("nhits", "mtp.backbones.pf_adapter:PFForecaster", dict(model="nhits"), tasks=_TS,
                   protocol="thuml", description="N-HiTS (pytorch-forecasting) on the same windows and split")
BACKBONES.register("tft", "mtp.backbones.pf_adapter:PFForecaster", dict(model="tft"), tasks=_TS,
                   protocol="thuml", description="Temporal Fusion Transformer (pytorch-forecasting) on the same windows")

# Time-series classification: (num_channels, seq_length, num_classes) come from the training data; defaults are
# each paper's. forward(x (B, C, T), mask (B, T)) -> logits.
_TSC = ["ts_classification"]
BACKBONES.register("mptsnet", "mtp.backbones.mptsnet:MPTSNet", {}, tasks=_TSC, family="mptsnet",
                   description="MPTSNet (Mu et al., AAAI 2025): periodic tiles from the training FFT, CNN + "
                               "transformers; official names")
BACKBONES.register("inception_time", "mtp.backbones.inception_time:InceptionTime", {}, tasks=_TSC,
                   family="inception_time",
                   description="InceptionTime (Ismail Fawaz et al. 2020), one network of the ensemble")
BACKBONES.register("tst", "mtp.backbones.tst:TST", {}, tasks=_TSC, family="tst",
                   description="TST (Zerveas et al., KDD 2021): transformer encoder with BatchNorm, supervised")
BACKBONES.register("minirocket", "mtp.backbones.minirocket:MiniRocket", {}, tasks=_TSC, family="minirocket",
                   description="MiniRocket (Dempster et al. 2021) via aeon + ridge: non-deep reference, closed-form fit")

# Speech separation: mixture (B, T) -> estimates (B, speakers, T) at the spec's sample rate.
_SEP = ["speech_separation"]
_MF2_PAGE = "https://huggingface.co/alibabasglab/MossFormer2_SS_16K (ClearerVoice-Studio's release)"
BACKBONES.register("mossformer2", "mtp.backbones.mossformer2:MossFormer2", {}, tasks=_SEP, family="mossformer2",
                   sample_rate=16000, weights_key="model",
                   weights={"official": WeightsSpec(filename="last_best_checkpoint.pt", page=_MF2_PAGE, key="model",
                                                    licence="Apache-2.0")},
                   description="MossFormer2 (Zhao et al. 2024), ClearerVoice's 16 kHz 2-speaker model (55.7M params)")
BACKBONES.register("mossformer2_small", "mtp.backbones.mossformer2:MossFormer2",
                   dict(in_channels=256, out_channels=256, num_blocks=2, kernel_size=32), tasks=_SEP,
                   family="mossformer2", sample_rate=8000,
                   description="a small MossFormer2 (2 blocks, 256 channels, 4 ms encoder windows) for 8 kHz "
                               "training on CPU")
BACKBONES.register("conv_tasnet", "mtp.backbones.conv_tasnet:ConvTasNet", {}, tasks=_SEP, sample_rate=8000,
                   description="Conv-TasNet (Luo & Mesgarani 2019) as torchaudio builds it; the baseline")

# Speech recognition: features (B, n_mels, T) + lengths -> CTC log-probs (B, T', vocabulary + blank) + lengths; the
# front end (waveform -> features) is part of the model. NeMo's LibriSpeech releases (model version 1.13.0,
# EncDecCTCModelBPE) as .nemo archives; sizes from the checkpoints' traced shapes. The vocabulary (128 here)
# is read from each archive's config when it loads.
_ASR = ["speech_recognition"]
_NGC = "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/nemo/models/{n} (file: https://api.ngc.nvidia.com/v2/" \
       "models/nvidia/nemo/{n}/versions/1.13.0/files/{n}.nemo)"


def _squeezeformer(size: str, d_model: int, n_layers: int, n_heads: int, time_reduce_idx: int, params: str) -> None:
    release = f"stt_en_squeezeformer_ctc_{size}_ls"
    BACKBONES.register(f"squeezeformer_ctc_{size}", "mtp.backbones.squeezeformer:SqueezeformerCTC",
                       dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, time_reduce_idx=time_reduce_idx,
                            num_classes=128),
                       tasks=_ASR, sample_rate=16000, family="squeezeformer_ctc",
                       detect="mtp.backbones.squeezeformer:detect",
                       weights={"official": WeightsSpec(filename=f"{release}.nemo", page=_NGC.format(n=release),
                                                        licence="NGC model card terms (see the page)")},
                       description=f"Squeezeformer-CTC {size} ({params} params), NeMo's LibriSpeech release "
                                   f"(Kim et al. 2022)")


_squeezeformer("xsmall", 144, 16, 4, 7, "9.0M")
_squeezeformer("small", 196, 18, 4, 8, "18.6M")
_squeezeformer("small_medium", 256, 16, 4, 7, "28.2M")
_squeezeformer("medium", 384, 20, 4, 10, "78.0M")        # not the paper's M (324 wide, reduction before 9)
_squeezeformer("medium_large", 512, 18, 8, 8, "125.0M")
_squeezeformer("large", 640, 22, 8, 10, "236.3M")
BACKBONES.register("conformer_ctc", "mtp.backbones.conformer_ctc:ConformerCTC", {}, tasks=_ASR, sample_rate=16000,
                   description="torchaudio's Conformer (Gulati et al. 2020) with a CTC head and NeMo's front end; "
                               "the baseline")

# Medical segmentation: volumes (B, C, D, H, W), every axis a multiple of 32 -> logits (B, out_channels, D, H, W).
# SwinUNETR presets are the released configurations (Project-MONAI/research-contributions SwinUNETR/BRATS21 and
# SwinUNETR/BTCV); those checkpoints were trained with MONAI <= 1.4's patch-merging order, hence "legacy".
# BraTS 2021: 4 channels [flair, t1ce, t1, t2] -> 3 sigmoid regions [TC, WT, ET]; BTCV: 1 CT channel -> 14 classes.
_MED = ["medical_segmentation"]
_SWIN_FILES = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
_SWIN_PAGE = "https://github.com/Project-MONAI/research-contributions/tree/main/SwinUNETR/{task}#models ({file})"
_SWIN_COMMON = dict(depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7, patch_size=2, mlp_ratio=4.0,
                    patch_merging="legacy")


def _swinunetr(name: str, in_channels: int, out_channels: int, feature_size: int, weights: dict, about: str) -> None:
    BACKBONES.register(name, "mtp.backbones.swinunetr:SwinUNETR",
                       dict(_SWIN_COMMON, in_channels=in_channels, out_channels=out_channels, feature_size=feature_size),
                       tasks=_MED, family="swinunetr", weights_key="state_dict", size_multiple=32, weights=weights,
                       description=f"SwinUNETR (Hatamizadeh et al. 2022) {about}; MONAI's names, legacy patch merging")


def _swin_release(task: str, filename: str, note: str = "") -> WeightsSpec:
    return WeightsSpec(filename=filename, page=_SWIN_PAGE.format(task=task, file=_SWIN_FILES + filename + note),
                       key="state_dict", licence="Apache-2.0")


_BRATS21_FOLDS = ("8854", "9059", "8981", "8924", "9035")  # the file names carry each fold's validation Dice
_swinunetr("swinunetr_brats21", 4, 3, 48,
           {f"fold{k}": _swin_release("BRATS21", f"fold{k}_f48_ep300_4gpu_dice0_{dice}.zip", "; a zip holding model.pt")
            for k, dice in enumerate(_BRATS21_FOLDS)},
           "BraTS 2021, feature size 48 (62.2M params), 5 fold releases")
# Untrained, for recipes: current MONAI's patch-merging order; channels come from the pipeline (modalities, regions).
BACKBONES.register("swinunetr", "mtp.backbones.swinunetr:SwinUNETR",
                   dict(_SWIN_COMMON, patch_merging="merging", in_channels=1, out_channels=1, feature_size=24),
                   tasks=_MED, family="swinunetr", weights_key="state_dict", size_multiple=32,
                   description="SwinUNETR (Hatamizadeh et al. 2022), MONAI's names, to train with a recipe")
for _size, _fs, _params in (("base", 48, "62.2M"), ("small", 24, "15.7M"), ("tiny", 12, "4.1M")):
    _swinunetr(f"swinunetr_btcv_{_size}", 1, 14, _fs,
               {"official": _swin_release("BTCV", f"swin_unetr.{_size}_5000ep_f{_fs}_lr2e-4_pretrained.pt")},
               f"BTCV {_size}, feature size {_fs} ({_params} params)")

# D-Former (Wu et al., NCA 2022): the reference model.py's SegNetwork defaults (Synapse: 1 CT channel, 14 classes,
# 14-channel heads hard-coded as in the reference). No weights are released. The reference's names are in_chan and
# num_classes (+ head_channels=None to honour num_classes); deep supervision returns (full, 1/2) logits while
# model.do_ds is True. Inputs: D a multiple of 16, H and W of 32 (size_multiple 32 covers all three axes).
BACKBONES.register("dformer", "mtp.backbones.dformer:SegNetwork",
                   dict(num_classes=14, in_chan=1, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                        patch_size=[2, 4, 4], group_size=[2, 8, 8], deep_supervision=True),
                   tasks=_MED, family="dformer", size_multiple=32,
                   description="D-Former (Wu et al. 2022, 50.6M params): local and dilated 3D attention in a U-shaped "
                               "transformer; the reference code's names, Synapse defaults, to train with a recipe")

# MONAI's SegResNet (Myronenko 2018) as it is, the baseline of the medical recipes; in/out channels come from the
# pipeline (modalities, regions).
BACKBONES.register("segresnet", "monai.networks.nets:SegResNet",
                   dict(spatial_dims=3, init_filters=8, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)),
                   tasks=_MED, size_multiple=8, description="MONAI SegResNet (Myronenko 2018), 8 initial filters")

# Point clouds: xyz (B, N, 3) + optional per-point features (B, N, C) + optional lengths (B,) -> logits (B, classes)
# or (B, N, classes). PointNet++ (Qi et al. 2017) with yanx27/Pointnet_Pointnet2_pytorch's state-dict names (its
# best_model.pth files nest them under "model_state_dict"); presets are its ModelNet40 / S3DIS / ShapeNetPart configs.
_PC_CLS = ["point_cloud_classification"]
_PC_SEG = ["point_cloud_segmentation"]
BACKBONES.register("pointnet2_cls_ssg", "mtp.backbones.pointnet2:PointNet2ClsSSG", dict(num_classes=40, in_channels=0),
                   tasks=_PC_CLS, family="pointnet2", weights_key="model_state_dict",
                   description="PointNet++ SSG classification (Qi et al. 2017, 1.5M params), ModelNet40 config; "
                               "yanx27's names")
BACKBONES.register("pointnet2_cls_msg", "mtp.backbones.pointnet2:PointNet2ClsMSG", dict(num_classes=40, in_channels=0),
                   tasks=_PC_CLS, family="pointnet2", weights_key="model_state_dict",
                   description="PointNet++ MSG classification (Qi et al. 2017, 1.7M params), ModelNet40 config; "
                               "yanx27's names")
# GPSFormer (Wang et al., ECCV 2024) from the paper alone: no official code, configuration or weights exist, so the
# names and the details the paper leaves open are ours (backbones/gpsformer.py lists them).
BACKBONES.register("gpsformer_cls", "mtp.backbones.gpsformer:GPSFormerCls", dict(num_classes=40, in_channels=0),
                   tasks=_PC_CLS, family="gpsformer",
                   description="GPSFormer classification (1.64M params here, 2.36M published); a paper-only "
                               "re-implementation: no official code or weights")
BACKBONES.register("gpsformer_elite_cls", "mtp.backbones.gpsformer:GPSFormerCls",
                   dict(num_classes=40, in_channels=0, embed_dim=32, widths=(32, 64, 128)), tasks=_PC_CLS,
                   family="gpsformer",
                   description="GPSFormer-elite classification (0.59M params here, 0.68M published; every width "
                               "halved: our reading); a paper-only re-implementation")
BACKBONES.register("pointnet2_semseg_ssg", "mtp.backbones.pointnet2:PointNet2SemSegSSG",
                   dict(num_classes=13, in_channels=6), tasks=_PC_SEG, family="pointnet2",
                   weights_key="model_state_dict",
                   description="PointNet++ SSG semantic segmentation (4 SA + 4 FP), S3DIS config (xyz + 6 feature "
                               "channels); yanx27's names")
BACKBONES.register("pointnet2_semseg_msg", "mtp.backbones.pointnet2:PointNet2SemSegMSG",
                   dict(num_classes=13, in_channels=6), tasks=_PC_SEG, family="pointnet2",
                   weights_key="model_state_dict",
                   description="PointNet++ MSG semantic segmentation, S3DIS config; yanx27's names")
BACKBONES.register("pointnet2_partseg_ssg", "mtp.backbones.pointnet2:PointNet2PartSegSSG",
                   dict(num_classes=50, num_categories=16, in_channels=0), tasks=_PC_SEG, family="pointnet2",
                   weights_key="model_state_dict",
                   description="PointNet++ SSG part segmentation, ShapeNetPart config (one-hot category in the last "
                               "FP); yanx27's names")
BACKBONES.register("pointnet2_partseg_msg", "mtp.backbones.pointnet2:PointNet2PartSegMSG",
                   dict(num_classes=50, num_categories=16, in_channels=0), tasks=_PC_SEG, family="pointnet2",
                   weights_key="model_state_dict",
                   description="PointNet++ MSG part segmentation, ShapeNetPart config; yanx27's names")
# ConDaFormer (Duan et al. 2023) with LHDuan/ConDaFormer's state-dict names (checkpoints nest them under "state_dict"
# with DDP's "module." prefix). Input: the official data dict (coord, discrete_coord, feat, offset[, inverse, length]),
# which the segmentation pipeline builds from a cloud (input_format "voxel_dict": coord + rgb for the 6-channel S3DIS
# model, coord + normal + colour for the 9-channel ScanNet ones).
_CONDAFORMER_SCANNET = dict(in_channels=9, voxel_size=0.02, quant_size=0.25, base_channels=48, head_dim=16,
                            drop_path_rate=0.3, channels=(96, 192, 384, 384, 384, 192, 96, 48),
                            layers=(2, 2, 6, 2, 0, 0, 0, 0))
BACKBONES.register("condaformer_s3dis", "mtp.backbones.condaformer:ConDaFormerSmall",
                   dict(in_channels=6, out_channels=13, voxel_size=0.04, window_size=8, quant_size=0.25,
                        base_channels=48, head_dim=16, drop_path_rate=0.5, channels=(96, 192, 384, 192, 96, 48),
                        layers=(2, 6, 2, 0, 0, 0)),
                   tasks=_PC_SEG, family="condaformer", weights_key="state_dict",
                   description="ConDaFormer-small (Duan et al. 2023, 8.4M params), S3DIS config; LHDuan's names")
BACKBONES.register("condaformer_scannet", "mtp.backbones.condaformer:ConDaFormer",
                   dict(_CONDAFORMER_SCANNET, out_channels=20, window_size=10),
                   tasks=_PC_SEG, family="condaformer", weights_key="state_dict",
                   description="ConDaFormer (Duan et al. 2023, 19.8M params), ScanNet v2 config; LHDuan's names")
BACKBONES.register("condaformer_scannet200", "mtp.backbones.condaformer:ConDaFormer",
                   dict(_CONDAFORMER_SCANNET, out_channels=200, window_size=8),
                   tasks=_PC_SEG, family="condaformer", weights_key="state_dict",
                   description="ConDaFormer (Duan et al. 2023, 19.6M params), ScanNet200 config; LHDuan's names")
# Range-image U-Net for organised clouds ([B, C, H, W] per-pixel features -> [B, out, H, W] logits), trained from
# scratch for mOSD instances by benchmarks/mosd_instances.py (pipelines/point_cloud/range_instances.py: 11 inputs;
# table, object and boundary logits).
BACKBONES.register("range_unet", "mtp.backbones.range_unet:RangeUNet",
                   dict(in_channels=11, out_channels=3, widths=(16, 32, 64, 128)), tasks=_PC_SEG, size_multiple=8,
                   description="2D U-Net over an organised cloud's pixel grid (0.48M params), range-image "
                               "segmentation as SqueezeSeg / RangeNet++; no released weights")
# Our pixel-space video denoiser (backbones/video_unet.py): factorised 2D conv + temporal conv/attention, class
# conditional with a null class for guidance; trained from scratch by recipes/video_generation/.
BACKBONES.register("video_unet", "mtp.backbones.video_unet:VideoUNet",
                   dict(in_channels=1, num_classes=10, widths=(32, 64, 128), attention_levels=(1, 2), patch_size=2),
                   tasks=["video_generation"], size_multiple=8,
                   description="factorised video U-Net (2.0M params): per-frame ResBlocks + temporal conv + temporal "
                               "attention, class + null class, epsilon prediction; 2x2 patches, 32x32 frames")
