"""Quantization, one file per idea (see DESIGN.md):

    nf4     the 4-bit NormalFloat code, blockwise absmax, double quantization, 4-bit packing
            (FP4 and int4 as comparison codes)
    int8    absmax and zero-point int8 (per tensor, per row, blockwise), LLM.int8() with outliers, Int8Linear
    ops     the fused quantized-LoRA matmul (cuda_ext when it builds, else PyTorch) and NF4Linear,
            the frozen 4-bit layer that uses it
    qlora   QLoRA (a quantized frozen base + float LoRA; merges into float or, lossily, into 4 bits)
            and LoftQ's alternating initialisation; quantize_model
"""
