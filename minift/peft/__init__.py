"""Parameter-efficient fine-tuning methods, one file each (see DESIGN.md, "How a method is written").

    selective   train a chosen subset of the weights (layers, components, BitFit)
    lora        LoRA, rsLoRA, DoRA; q/k/v slices of GPT-2's fused c_attn; merge / unmerge
    adapters    bottleneck adapters: series (Houlsby, Pfeiffer) and parallel
    prefix      prefix tuning: learned per-layer keys and values (prefix_kv), MLP reparameterisation
    prompt      prompt tuning: soft prompts prepended through inputs_embeds
    masking     random masking: a fixed sparse mask of trainable weight entries, stored as a sparse delta
    reft        LoReFT: low-rank interventions on the residual stream at chosen layers and positions
    common      what the methods share: MethodConfig (cfg.apply(model), cfg.method) and apply_config,
                AdapterLayer, disable_adapters, remove_adapters, the steps of linear-layer surgery
    io          adapter files: save_adapter / load_adapter, and LoRA in the Hugging Face PEFT layout

QLoRA (a quantized base + LoRA) lives in minift/quant/qlora.py.
"""
