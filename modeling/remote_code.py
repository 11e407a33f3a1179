"""Hugging Face "remote code" for activations that transformers' own FFNs cannot express (fatrelu, drelu).

ProSparse publishes FATReLU checkpoints as `model_type "sparsellama"` / `SparseLlamaForCausalLM` with
`configuration_sparsellama.py` / `modeling_sparsellama.py` beside the weights (PAPERS.md (c)). We write the
same layout for any transformers causal LM with a gated FFN: `<Base>ForCausalLM` of `model_type` m becomes
`Sparse<Base>ForCausalLM` of `model_type "sparse" + m` (sparsellama, sparsemistral, sparseqwen2). The two
files are rendered from the templates in `hf_remote/` and import only torch and transformers.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported only when a model is exported
    from transformers import PreTrainedModel

TEMPLATE_DIR = Path(__file__).parent / "hf_remote"
SPARSE_PREFIX = "sparse"


@dataclass(frozen=True)
class RemoteCodeNames:
    """Names of the remote-code classes for one base architecture."""
    base_model_type: str        # "llama"
    base_config_class: str      # "LlamaConfig"
    base_causal_lm_class: str   # "LlamaForCausalLM"

    @property
    def model_type(self) -> str:
        return SPARSE_PREFIX + self.base_model_type                       # "sparsellama"

    @property
    def prefix(self) -> str:
        return "Sparse" + self.base_causal_lm_class[: -len("ForCausalLM")]  # "SparseLlama"

    @property
    def config_module(self) -> str:
        return f"configuration_{self.model_type}"

    @property
    def modeling_module(self) -> str:
        return f"modeling_{self.model_type}"

    @property
    def auto_map(self) -> dict[str, str]:
        return {
            "AutoConfig": f"{self.config_module}.{self.prefix}Config",
            "AutoModelForCausalLM": f"{self.modeling_module}.{self.prefix}ForCausalLM",
        }


def remote_code_names(model: PreTrainedModel) -> RemoteCodeNames:
    """Names for `model`, which must be a transformers-native `...ForCausalLM` (its classes importable
    as `from transformers import <name>` by the rendered files)."""
    import transformers

    causal_lm, config = type(model).__name__, type(model.config).__name__
    native = type(model).__module__.startswith("transformers.models.")
    if not (native and causal_lm.endswith("ForCausalLM") and hasattr(transformers, causal_lm)
            and hasattr(transformers, config)):
        raise ValueError(
            f"export: {causal_lm} is not a transformers-native ...ForCausalLM, so no remote code can be "
            "written for hidden_act fatrelu/drelu; convert to relu or silu, or export a LLaMA/Mistral/Qwen2 model"
        )
    return RemoteCodeNames(model.config.model_type, config, causal_lm)


def write_remote_code(names: RemoteCodeNames, out_dir: str | Path) -> list[Path]:
    """Render `configuration_<type>.py` and `modeling_<type>.py` into `out_dir`; return their paths."""
    values = {
        "Prefix": names.prefix, "model_type": names.model_type,
        "BaseConfig": names.base_config_class, "BaseForCausalLM": names.base_causal_lm_class,
    }
    written = []
    for template, module in (("configuration_sparse.py.tmpl", names.config_module),
                             ("modeling_sparse.py.tmpl", names.modeling_module)):
        text = string.Template((TEMPLATE_DIR / template).read_text()).substitute(values)
        path = Path(out_dir) / f"{module}.py"
        path.write_text(text)
        written.append(path)
    return written


def base_model_type(model_type: str) -> str | None:
    """"llama" for "sparsellama" when "llama" is a transformers model type, else None."""
    from transformers import CONFIG_MAPPING

    if model_type.startswith(SPARSE_PREFIX):
        base = model_type[len(SPARSE_PREFIX):]
        if base in CONFIG_MAPPING:
            return base
    return None
