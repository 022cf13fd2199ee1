"""Task pipelines, and the registry of tasks and metrics (data only: nothing heavy is imported here)."""
from mtp.registry import METRICS, TASKS

_DETECT_SR = "mtp.backbones.sr_detect:detect"
TASKS.register("super_resolution", "mtp.pipelines.image_restoration.pipeline:SuperResolutionPipeline",
               detect=_DETECT_SR, extra="vision", description="x2/x3/x4 image super-resolution (HAT, IMDN)")
TASKS.register("denoising", "mtp.pipelines.image_restoration.pipeline:DenoisingPipeline",
               detect=_DETECT_SR, extra="vision", description="colour Gaussian denoising (sigma 15/25/50)")
TASKS.register("jpeg_restoration", "mtp.pipelines.image_restoration.pipeline:JPEGRestorationPipeline",
               detect=_DETECT_SR, extra="vision", description="JPEG artefact removal (quality 10-40)")
TASKS.register("forecasting", "mtp.pipelines.forecasting.pipeline:ForecastingPipeline", extra="timeseries",
               description="multivariate time-series forecasting (iTransformer, DLinear, PatchTST, ...)")
TASKS.register("ts_classification", "mtp.pipelines.ts_classification.pipeline:TSClassificationPipeline",
               extra="tsc",
               description="time-series classification: UEA/UCR archives (MPTSNet, InceptionTime, TST, MiniRocket)")
TASKS.register("speech_separation", "mtp.pipelines.speech_separation.pipeline:SpeechSeparationPipeline",
               extra="audio", description="speech separation: one file per speaker (MossFormer2, Conv-TasNet)")
TASKS.register("speech_recognition", "mtp.pipelines.speech_recognition.pipeline:SpeechRecognitionPipeline",
               extra="audio", description="speech recognition (CTC): text, word timings, SRT/VTT (Squeezeformer, "
                                          "Conformer)")
TASKS.register("medical_segmentation", "mtp.pipelines.medical_segmentation.pipeline:MedicalSegmentationPipeline",
               extra="medical", description="3D medical segmentation: NIfTI cases in, masks on the input's grid out "
                                            "(SwinUNETR, SegResNet)")

# Metrics are streaming objects: update(prediction, target) per batch, compute() -> dict at the end.
_IMG = "mtp.pipelines.image_restoration.metrics"
METRICS.register("psnr", f"{_IMG}:PSNRMetric", tasks=["super_resolution", "denoising", "jpeg_restoration"],
                 description="PSNR on Y (BT.601), border shaved; protocol basicsr (float Y) or matlab (uint8 Y)")
METRICS.register("ssim", f"{_IMG}:SSIMMetric", tasks=["super_resolution", "denoising", "jpeg_restoration"],
                 description="SSIM, 11x11 Gaussian window sigma 1.5, same protocols as psnr")
METRICS.register("forecast_errors", "mtp.pipelines.forecasting.metrics:ForecastMetrics", tasks=["forecasting"],
                 description="mse/mae on the normalised scale (papers' convention); mae/rmse/mape/mase in "
                             "original units")
METRICS.register("classification", "mtp.pipelines.ts_classification.metrics:ClassificationMetrics",
                 tasks=["ts_classification"],
                 description="accuracy, balanced accuracy, macro F1 and the confusion matrix (scikit-learn)")
METRICS.register("separation", "mtp.pipelines.speech_separation.metrics:SeparationMetrics",
                 tasks=["speech_separation"],
                 description="SI-SNR(i) and BSS-eval SDR(i), permutation-invariant, averaged over sources (torchmetrics)")
METRICS.register("wer", "mtp.pipelines.speech_recognition.metrics:WERMetric", tasks=["speech_recognition"],
                 description="corpus-level WER and CER in percent (total edits / total reference words or characters, "
                             "jiwer), both sides normalised (lower case, punctuation removed)")
METRICS.register("digit_accuracy", "mtp.pipelines.speech_recognition.metrics:DigitAccuracy",
                 tasks=["speech_recognition"],
                 description="exact-match share of utterances in percent, when every reference is digit words (FSDD)")
METRICS.register("region_overlap", "mtp.pipelines.medical_segmentation.metrics:RegionOverlapMetrics",
                 tasks=["medical_segmentation"],
                 description="Dice and HD95 (mm, symmetric 95th percentile) per region on the original grid; "
                             "empty-region policy stated")

TASKS.register("point_cloud_classification", "mtp.pipelines.point_cloud.pipeline:PointCloudClassificationPipeline",
               extra="pointcloud", description="point-cloud shape classification: a cloud -> class id, name and "
                                               "probabilities (JSON) (PointNet++, GPSFormer)")
TASKS.register("point_cloud_segmentation", "mtp.pipelines.point_cloud.pipeline:PointCloudSegmentationPipeline",
               extra="pointcloud", description="point-cloud semantic segmentation of any size (grid sample, sphere "
                                               "crops; PointNet++, ConDaFormer) and object instances of organised "
                                               "clouds (range_unet): the cloud with pred (and instance) labels per "
                                               "point + a PNG")
METRICS.register("point_segmentation", "mtp.pipelines.point_cloud.pipeline:SegmentationMetrics",
                 tasks=["point_cloud_segmentation"],
                 description="per-class IoU, mIoU, overall and mean class accuracy from one confusion matrix summed "
                             "over the split (ignore_index left out); vote/ keys for test-time voting")
METRICS.register("point_classification", "mtp.pipelines.point_cloud.pipeline:ClassificationAccuracy",
                 tasks=["point_cloud_classification"],
                 description="overall accuracy and mean class accuracy (classes present in the reference)")

TASKS.register("video_generation", "mtp.pipelines.video_generation.pipeline:VideoGenerationPipeline", extra="video",
               description="class-conditional video generation (VideoUNet, DDIM / DPM-Solver++, guidance; plain, "
                           "FreeLong or Video-Infinity temporal attention for long videos): MP4 / GIF / PNG grid per "
                           "request")
METRICS.register("diffusion_loss", "mtp.pipelines.video_generation.pipeline:DiffusionLossMetric",
                 tasks=["video_generation"],
                 description="epsilon-prediction MSE on held-out clips at fixed, evenly spread timesteps (seeded noise)")
