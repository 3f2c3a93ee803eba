"""The parts of the pre-training DataModule (``data_modules.pretrain.PretrainDataModule``):
``captions`` reads the caption files, ``batches`` masks rows and makes batches, ``stream`` decides
which objective and which captions each micro-batch gets."""
