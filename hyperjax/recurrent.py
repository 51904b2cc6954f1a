"""The HyperLSTM (Ha, Dai & Le 2016) and its layer-normed LSTM baseline: pure cells for `lax.scan`, and
linen / NNX cells (`HyperLSTM`, `LayerNormLSTM`, `NNXHyperLSTM`, `NNXLayerNormLSTM`, defined on first access)."""

from hyperjax._src import recurrent as _recurrent
from hyperjax._src.recurrent import (FORGET_BIAS, GATES, INIT_SCALE, LN_EPS, HyperLSTMState, LSTMState,
                                     hyperlstm_cell, hyperlstm_init, hyperlstm_param_count, hyperlstm_scales,
                                     lstm_cell, lstm_init, lstm_param_count, scan, zero_state)

__all__ = ["FORGET_BIAS", "GATES", "INIT_SCALE", "LN_EPS", "HyperLSTM", "HyperLSTMState", "LSTMState", "LayerNormLSTM",
           "NNXHyperLSTM", "NNXLayerNormLSTM", "hyperlstm_cell", "hyperlstm_init", "hyperlstm_param_count",
           "hyperlstm_scales", "lstm_cell", "lstm_init", "lstm_param_count", "scan", "zero_state"]


def __getattr__(name: str):
    if name in _recurrent.FLAX_CELLS:
        return _recurrent._flax_cells()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
