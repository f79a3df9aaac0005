"""StepProfile on a CPU: the host ops of the profiled window only, and no GPU figures."""

import torch

from types import SimpleNamespace

from torch.autograd import DeviceType

from benchmarks.gpu_profile import StepProfile, host_times, kernel_times, print_step_profile


def test_step_profile_covers_its_window_and_names_the_host_ops():
    profile = StepProfile(torch.device("cpu"), first=3, last=7, top=1000)
    a = torch.randn(64, 64)
    for step in range(1, 11):
        if 3 < step <= 7:  # the steps after `first` through `last`
            a = torch.mm(a, a).tanh()
        else:
            a = a.cumsum(0).tanh()  # outside the window: never in the profile
        profile.at(step)
    r = profile.result
    assert r["steps"] == 4 and r["gpu_ms_per_step"] is None and r["top_gpu"] == []
    ops = {row["op"]: row for row in r["top_host"]}
    assert "aten::mm" in ops and ops["aten::mm"]["calls"] == 4
    assert "aten::cumsum" not in ops
    assert r["wall_ms_per_step"] > 0


def test_printed_step_profile_names_the_window_and_its_ops(capsys):
    prof = {"steps": 4, "wall_ms_per_step": 12.5, "gpu_ms_per_step": 3.25,
            "top_gpu": [{"op": "gemm_kernel", "ms_per_step": 2.0, "calls": 8}],
            "top_host": [{"op": "aten::mm", "ms_per_step": 0.5, "calls": 4}]}
    print_step_profile("probe t2i", prof)
    print_step_profile("probe mixed", None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "profile probe t2i: 12.50 ms a step wall, 3.25 ms of GPU kernels"
    assert lines[1].split() == ["gpu", "2.000", "ms/step", "8", "calls", "gemm_kernel"]
    assert lines[2].split() == ["host", "0.500", "ms/step", "4", "calls", "aten::mm"]
    assert lines[3] == "profile probe mixed: none"


def test_kernel_and_host_times_count_each_microsecond_once():
    def row(key, device, gpu_us=0.0, cpu_us=0.0, annotation=False):
        return SimpleNamespace(key=key, device_type=device, is_user_annotation=annotation, count=2,
                               self_device_time_total=gpu_us, self_cpu_time_total=cpu_us)

    events = [row("aten::mm", DeviceType.CPU, gpu_us=3000, cpu_us=500),  # its kernel's time, again
              row("gemm_kernel", DeviceType.CUDA, gpu_us=3000),
              row("Optimizer.step#AdamW.step", DeviceType.CUDA, gpu_us=5000, annotation=True),  # a range
              row("adamw_kernel", DeviceType.CUDA, gpu_us=4000),
              row("cudaStreamSynchronize", DeviceType.CPU, cpu_us=900)]
    assert kernel_times(events) == [("adamw_kernel", 4.0, 2), ("gemm_kernel", 3.0, 2)]
    assert host_times(events) == [("cudaStreamSynchronize", 0.9, 2), ("aten::mm", 0.5, 2)]


def test_a_window_never_started_is_never_stopped():
    profile = StepProfile(torch.device("cpu"), first=3, last=7)
    for step in range(5, 9):  # resumed past ``first``
        profile.at(step)
    assert profile.result is None


def test_kernel_classes_sort_the_train_steps_kernels():
    from benchmarks.gpu_profile import kernel_classes

    ops = [("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(a", 5.0, 2),
           ("triton_poi_fused__to_copy_add_copy_copy__div_lerp_mul_rsub_sqrt_sub_unbind_11", 1.0, 3),
           ("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN", 5.0, 9),
           ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128_1x", 3.0, 4),
           ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", 0.25, 4),
           ("void cudnn::fusion::compute_dot_do_o<true>(void const*, void const*, void*, void", 0.25, 4),
           ("triton_poi_fused__to_copy_11", 0.5, 6), ("triton_poi_fused__to_copy_t_30", 0.5, 6),
           ("triton_poi_fused__to_copy_cat_31", 0.5, 2), ("triton_tem_fused__to_copy_mm_t_7", 0.5, 2),
           ("triton_poi_fused_cat_mul_silu_silu_backward_view_12", 0.25, 2),
           ("triton_poi_fused__to_copy__unsafe_view_mul_silu_silu_backward_view_12", 0.5, 2),
           ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<a", 0.25, 2),
           ("Memcpy HtoD (Pageable -> Device)", 0.125, 1), ("some_unknown_kernel", 0.0625, 1)]
    classes = kernel_classes(ops)
    assert classes == {"optimizer": 6.0, "attention": 3.5, "gemm": 5.5, "cast": 1.5, "elementwise": 1.0,
                       "copy": 0.125, "other": 0.0625}
    assert sum(classes.values()) == sum(ms for _, ms, _ in ops)
