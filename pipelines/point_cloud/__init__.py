"""Point-cloud pipelines: classification, semantic, part and instance segmentation, and their metrics."""
