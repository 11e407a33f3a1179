"""Continue-pretraining recipes (DeepSpeed ZeRO-3) and their YAML configs."""
