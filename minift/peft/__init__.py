"""Parameter-efficient fine-tuning methods, one file each (see DESIGN.md, "How a method is written").

    selective   train a chosen subset of the weights (layers, components, BitFit)
    lora        LoRA, rsLoRA, DoRA; q/k/v slices of GPT-2's fused c_attn; merge / unmerge
    adapters    bottleneck adapters: series (Houlsby, Pfeiffer) and parallel
    common      what the module-surgery methods share: AdapterLayer, disable_adapters, remove_adapters
    io          adapter files: save_adapter / load_adapter, and LoRA in the Hugging Face PEFT layout
"""
