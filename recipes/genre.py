"""Music-genre classification on GTZAN (10 genres, 30-s clips)."""
from corpora.gtzan import prepare_gtzan
from framework.classification import UtteranceClassification


class Genre(UtteranceClassification):
    """Music-genre classification on GTZAN: 10 genres, random/file/k-fold splits, accuracy."""

    config_file = "genre.yaml"

    def prepare_data(self, prepare_data, target_dir, cache_dir, get_path_only=False):
        return prepare_gtzan(target_dir, **prepare_data, get_path_only=get_path_only)

    def cross_validation_folds(self, cfg) -> list[dict]:
        """``split: kfold`` without a ``fold``: every fold, each run with its test fold."""
        data = cfg.prepare_data
        if data.split != "kfold" or data.fold is not None:
            return []
        return [{"prepare_data": {"fold": fold}} for fold in range(data.folds)]
