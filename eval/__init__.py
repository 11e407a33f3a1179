"""Sparsity metrics, perplexity, lm-eval tasks and the leaderboard."""
from .activation_capture import CapturedActivations, capture_x1
from .cett import cett_sparsity, cett_sparsity_on_batch, cett_thresholds, layer_cett
from .perplexity import mean_nll, perplexity
from .ppl_p import ppl_p_sparsity
from .scaling_fit import fit_activation_scaling, predict_activation_ratio
from .scaling_plot import plot_activation_scaling
from .thresholding import ThresholdedFFNs, apply_thresholds
from .zero_fraction import converted_view, zero_fraction_sparsity

# Quality through lm-eval, `actsparse eval` config and results, leaderboard (lm-eval imported lazily).
from .eval_config import EvalConfig, EvalConfigError, config_for_checkpoint, load_eval_config
from .leaderboard import build_table, to_markdown
from .lm_eval_adapter import MissingTaskData, run_task_groups, wrap_model
from .published import PUBLISHED_ROWS, published_rows
from .results import RESULTS_SCHEMA, load_results, write_results
from .run_eval import evaluate
from .task_groups import TaskGroups, load_task_groups
