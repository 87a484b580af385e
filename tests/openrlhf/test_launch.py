"""The launcher's Ray runtime env, OpenRLHF's skipped ``ray.init``, and the import-time hook.

The last test starts a real Ray cluster (ray is installed by scripts/install_openrlhf.sh) and
runs the hook in its workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest

from trainer.openrlhf import hook, launch
from trainer.openrlhf.config import ConfigError, PluginConfig

pytestmark = pytest.mark.openrlhf

TRAIN_ARGS = [
    "--algo.advantage.estimator",
    "dr_grpo",
    "--algo.kl.use_loss",
    "--rollout.n_samples_per_prompt",
    "8",
]


def launcher_argv(*extra):
    return [
        "--teacher-url", "http://t0:8000", "--teacher-url", "http://t1:8000/",
        "--method", "antisd", "--params", '{"lam_max": 0.3}', "--seed", "7", *extra,
        "--", *TRAIN_ARGS,
    ]  # fmt: skip


def test_runtime_env_carries_the_hook_and_the_configuration(monkeypatch):
    monkeypatch.setenv("TOKENCREDIT_API_KEY", "k-123")
    monkeypatch.delenv("TOKENCREDIT_ADMIN_KEY", raising=False)
    args, rest = launch.parse_args(launcher_argv())
    assert rest == TRAIN_ARGS
    config = launch.config_from_args(args)
    env = launch.build_runtime_env(config, environ={"NCCL_DEBUG": "INFO"})
    assert env["worker_process_setup_hook"] == "trainer.openrlhf.hook.setup"
    assert callable(hook.setup) and f"{hook.__name__}.setup" == launch.SETUP_HOOK
    v = env["env_vars"]
    assert v["TOKENCREDIT_URLS"] == "http://t0:8000,http://t1:8000"
    assert v["TOKENCREDIT_METHOD"] == "antisd" and v["TOKENCREDIT_SEED"] == "7"
    assert v["TOKENCREDIT_API_KEY"] == "k-123" and "TOKENCREDIT_ADMIN_KEY" not in v
    # what train_ppo_ray's own (skipped) ray.init would have set, the user's value first
    assert v["NCCL_DEBUG"] == "INFO" and v["TOKENIZERS_PARALLELISM"] == "true"
    assert v["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] == "1"
    assert v["PYTHONPATH"].startswith(str(launch.REPO_ROOT))
    # a worker reading these variables gets the launcher's configuration back
    assert PluginConfig.from_env(v) == config
    assert config.params == {"lam_max": 0.3}


@pytest.mark.parametrize(
    "train_args,match",
    [
        ([], "use dr_grpo"),  # OpenRLHF's default estimator is gae
        (["--algo.advantage.estimator=gae", "--algo.kl.use_loss"], "use dr_grpo"),
        (["--algo.advantage.estimator", "rloo"], "use_loss"),  # default init_coef 0.01
    ],
)
def test_arguments_the_plugin_cannot_honour_fail_before_ray(train_args, match):
    config = PluginConfig(urls=("http://t:1",), method="grpo")
    with pytest.raises(ConfigError, match=match):
        launch.check_openrlhf_args(train_args, config)


def test_weight_sync_needs_hf_checkpoints_and_the_base_weights():
    config = PluginConfig(
        urls=("http://t:1",), method="grpo", weights_prefix="run1", base_weights="base"
    )
    with pytest.raises(ConfigError, match="save_hf"):
        launch.check_openrlhf_args(TRAIN_ARGS, config)
    launch.check_openrlhf_args([*TRAIN_ARGS, "--ckpt.save_hf", "--ckpt.save_steps", "5"], config)
    no_base = PluginConfig(urls=("http://t:1",), method="grpo", weights_prefix="run1")
    with pytest.raises(ConfigError, match="--base-weights"):
        launch.check_openrlhf_args(
            [*TRAIN_ARGS, "--ckpt.save_hf", "--ckpt.save_steps", "5"], no_base
        )
    launch.check_openrlhf_args(
        ["--algo.advantage.estimator", "grpo", "--algo.kl.init_coef", "0"],
        PluginConfig(urls=("http://t:1",), method="grpo"),
    )


def test_push_transport_is_configured_by_flag_and_variable(monkeypatch):
    monkeypatch.setenv("TOKENCREDIT_ADMIN_KEY", "a-1")
    args, _ = launch.parse_args(launcher_argv("--push-weights", "--push-address", "10.0.0.5"))
    config = launch.config_from_args(args)
    assert config.weights_sync == "push" and config.syncing and config.weights_prefix is None
    v = launch.build_runtime_env(config)["env_vars"]
    assert v["TOKENCREDIT_WEIGHTS_SYNC"] == "push" and v["TOKENCREDIT_PUSH_BACKEND"] == "auto"
    assert v["TOKENCREDIT_PUSH_ADDRESS"] == "10.0.0.5" and v["TOKENCREDIT_ADMIN_KEY"] == "a-1"
    assert PluginConfig.from_env(v) == config
    # push needs neither HF checkpoints nor a base folder in the pool's weights root
    launch.check_openrlhf_args(TRAIN_ARGS, config)
    with pytest.raises(SystemExit):  # argparse names the choices
        launch.parse_args(launcher_argv("--push-weights", "--push-backend", "mpi"))
    both = launcher_argv("--push-weights", "--sync-weights", "run1", "--base-weights", "b")
    with pytest.raises(ConfigError, match="choose one transport"):
        launch.config_from_args(launch.parse_args(both)[0])


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TOKENCREDIT_WEIGHTS_SYNC", "nfs"), ("TOKENCREDIT_PUSH_BACKEND", "mpi")],
)
def test_bad_push_settings_are_named(variable, value):
    env = {"TOKENCREDIT_URLS": "http://t:1", "TOKENCREDIT_METHOD": "hsd", variable: value}
    with pytest.raises(ConfigError, match=variable):
        PluginConfig.from_env(env)


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="TOKENCREDIT_METHOD"):
        PluginConfig.from_env({"TOKENCREDIT_URLS": "http://t:1"})
    with pytest.raises(ConfigError, match="not a method"):
        PluginConfig.from_env({"TOKENCREDIT_URLS": "http://t:1", "TOKENCREDIT_METHOD": "ppo"})
    with pytest.raises(ConfigError, match="TOKENCREDIT_PARAMS"):
        PluginConfig.from_env(
            {
                "TOKENCREDIT_URL": "http://t:1",
                "TOKENCREDIT_METHOD": "hsd",
                "TOKENCREDIT_PARAMS": "{",
            }
        )
    with pytest.raises(ConfigError, match="no teacher URL"):
        PluginConfig.from_env({"TOKENCREDIT_METHOD": "hsd"})


@pytest.mark.parametrize("initialized", [True, False])
def test_train_ppo_ray_reuses_an_initialized_ray(orlhf, monkeypatch, initialized):
    """OpenRLHF's own train(): with Ray already up (the launcher's ray.init), it does not init
    again, so the launcher's runtime env is the job's."""
    module = orlhf.train_ppo_ray
    fake_ray = MagicMock()
    fake_ray.is_initialized.return_value = initialized

    class Stop(Exception):
        pass

    def stop(args):
        raise Stop

    monkeypatch.setattr(module, "ray", fake_ray)
    monkeypatch.setattr(module, "get_strategy", stop)
    with pytest.raises(Stop):
        module.train(SimpleNamespace())
    assert fake_ray.init.called is not initialized


def test_main_inits_ray_with_the_runtime_env_then_runs_train_ppo_ray(server, monkeypatch):
    fake_ray = MagicMock()
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    ran = {}
    monkeypatch.setattr(launch, "run_train_ppo_ray", lambda args: ran.setdefault("args", args))
    monkeypatch.delenv("TOKENCREDIT_API_KEY", raising=False)
    argv = [
        "--teacher-url",
        server.url,
        "--method",
        "hsd",
        "--student",
        "server",
        "--",
        *TRAIN_ARGS,
    ]
    assert launch.main(argv) == 0  # preflight against the live server included
    config = PluginConfig(urls=(server.url,), method="hsd", student="server")
    fake_ray.init.assert_called_once_with(
        address=None, runtime_env=launch.build_runtime_env(config)
    )
    assert ran["args"] == TRAIN_ARGS


def test_main_stops_before_ray_when_the_pool_is_down(monkeypatch, capsys):
    fake_ray = MagicMock()
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    from client.launcher import free_port

    argv = ["--teacher-url", f"http://127.0.0.1:{free_port()}", "--method", "hsd",
            "--preflight-timeout", "1", "--", *TRAIN_ARGS]  # fmt: skip
    assert launch.main(argv) == 2
    assert "error:" in capsys.readouterr().err
    fake_ray.init.assert_not_called()


def test_install_patches_on_import_and_when_already_imported(tmp_path, monkeypatch):
    (tmp_path / "tc_fake_target.py").write_text("class K:\n    value = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def patch(module):
        module.K.value = 2
        seen.append(module.__name__)

    finders = list(sys.meta_path)
    try:
        hook.install({"tc_fake_target": patch})
        import tc_fake_target

        assert tc_fake_target.K.value == 2 and seen == ["tc_fake_target"]
        hook.install({"tc_fake_target": patch})  # already imported: patched at once
        assert seen == ["tc_fake_target", "tc_fake_target"]
    finally:
        sys.meta_path[:] = finders
        sys.modules.pop("tc_fake_target", None)


STUBBED_IMPORT = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, importlib.util, sys, types
    from unittest.mock import MagicMock

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            setattr(self, name, MagicMock())
            return getattr(self, name)

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        roots = {ROOTS}
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.roots:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
        def create_module(self, spec):
            m = Stub(spec.name); m.__path__ = []; return m
        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())
    from trainer.openrlhf import hook
    hook.setup()  # what Ray runs first in every worker
    import logging
    logging.getLogger("tokencredit.openrlhf").info("PLUGIN-LOG-LINE")
    assert not [m for m in sys.modules if m.startswith("openrlhf")], "setup imported openrlhf"
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer  # imports the experience maker too
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    for f in (RemoteExperienceMaker.compute_advantages_and_returns, BasePPOTrainer.train_step,
              BasePPOTrainer.save_logs_and_checkpoints, BasePPOTrainer.save_best_checkpoint,
              BasePPOTrainer.init_checkpoint_states):
        assert getattr(f, "__tokencredit_wrapped__", False), f
    from openrlhf.trainer.ray.launcher import BaseModelActor  # the actors' end of a push
    assert callable(BaseModelActor.tokencredit_push_weights)
    print("PATCHED")
    """
)


def test_setup_hook_patches_openrlhf_when_the_trainer_imports_it(stub_roots):
    """In a fresh interpreter, as in a Ray worker: setup() imports nothing of OpenRLHF, the
    plugin's INFO lines reach stderr (Ray workers have no log handler of their own), and the
    classes are wrapped as soon as OpenRLHF's trainer module is imported."""
    env = {**os.environ, "TOKENCREDIT_URLS": "http://t:1", "TOKENCREDIT_METHOD": "antisd"}
    env["PYTHONPATH"] = os.pathsep.join([str(launch.REPO_ROOT), env.get("PYTHONPATH", "")])
    script = STUBBED_IMPORT.replace("{ROOTS}", repr(sorted(stub_roots)))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "PATCHED" in out.stdout, out.stderr[-3000:]
    assert "INFO tokencredit.openrlhf: PLUGIN-LOG-LINE" in out.stderr


def test_setup_fails_the_worker_on_bad_configuration(monkeypatch):
    from trainer.openrlhf import plugin

    monkeypatch.setenv("TOKENCREDIT_URLS", "http://t:1")
    monkeypatch.setenv("TOKENCREDIT_METHOD", "nope")
    plugin.set_plugin(None)
    with pytest.raises(ConfigError, match="not a method"):
        hook.setup()


def test_real_ray_workers_run_the_hook(monkeypatch):
    import ray

    # Ray kills workers when the *machine* is above 95% memory; on a shared test machine that
    # is other processes' doing, not this 0.1 GB actor's. The raylet reads this at start.
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    config = PluginConfig(urls=("http://t:1",), method="antisd", params={"lam_max": 0.2})
    ray.init(num_cpus=1, include_dashboard=False, runtime_env=launch.build_runtime_env(config))
    try:

        @ray.remote
        class Probe:  # OpenRLHF's PPOTrainer is an actor like this one
            def look(self):
                import sys

                from trainer.openrlhf import hook, plugin

                return {
                    "armed": any(isinstance(f, hook.PatchOnImport) for f in sys.meta_path),
                    "config": plugin.get_plugin().config,
                    "openrlhf_imported": any(m.startswith("openrlhf") for m in sys.modules),
                }

        got = ray.get(Probe.remote().look.remote(), timeout=120)
    finally:
        ray.shutdown()
    assert got == {"armed": True, "config": config, "openrlhf_imported": False}


# ---- refused combinations: the same rules at launch (argv) and at the first step (args) ----

REFUSED = [
    # (method, extra launcher config, extra train_ppo_ray args, message)
    ("antisd", {"student": "server"}, ["--rollout.temperature", "0.7"], "temperature"),
    ("opd", {}, ["--rollout.temperature=1.2"], "temperature"),
    ("antisd", {}, [], "teacher is the current policy"),
    ("hsd", {"weights_prefix": "r", "base_weights": "b"}, ["--ckpt.save_hf", "--ckpt.save_steps", "2"], "every step"),
    ("antisd", {"student": "server"}, ["--algo.dynamic_filtering_enable"], "all-fail groups"),
    ("hsd", {"student": "server"}, ["--algo.dynamic_filtering_enable"], "all-fail groups"),
    ("grpo", {}, ["--data.max_images_per_prompt", "2"], "images"),
    ("opd", {"weights_prefix": "r", "base_weights": "b"}, ["--ckpt.save_hf", "--ckpt.save_steps", "1", "--ds.lora.rank", "16"], "LoRA"),
    ("opd", {"weights_prefix": "r", "base_weights": "b"}, ["--ckpt.save_hf", "--ckpt.save_steps", "1", "--train.enable_ema"], "EMA"),
    ("hsd", {"weights_sync": "push"}, ["--ds.lora.rank", "16"], "LoRA"),
]  # fmt: skip
ACCEPTED = [
    ("grpo", {}, ["--rollout.temperature", "0.7", "--algo.dynamic_filtering_enable"]),
    ("opd", {}, ["--ds.lora.rank", "16", "--train.enable_ema"]),  # fixed teacher: no syncing
    ("antisd", {"student": "server"}, []),
    ("antisd", {"weights_prefix": "r", "base_weights": "b"}, ["--ckpt.save_hf", "--ckpt.save_steps", "1"]),
    ("opsd", {"student": "server"}, ["--algo.dynamic_filtering_enable"]),
    # push: every step, no HF checkpoint or base folder; it sends the policy, not the EMA
    ("hsd", {"weights_sync": "push"}, []),
    ("antisd", {"weights_sync": "push"}, ["--train.enable_ema"]),
]  # fmt: skip


@pytest.mark.parametrize("method,extra,args,match", REFUSED)
def test_refused_combinations_fail_before_ray(method, extra, args, match):
    config = PluginConfig(urls=("http://t:1",), method=method, **extra)
    with pytest.raises(ConfigError, match=match):
        launch.check_openrlhf_args([*TRAIN_ARGS, *args], config)


@pytest.mark.parametrize("method,extra,args,match", REFUSED)
def test_refused_combinations_fail_the_first_step(method, extra, args, match):
    """For a run started without the launcher: OpenRLHF's parsed args, at the first step."""
    from trainer.openrlhf.plugin import TeacherCredit, UnsupportedConfig

    config = PluginConfig(urls=("http://t:1",), method=method, **extra)
    with pytest.raises(UnsupportedConfig, match=match):
        TeacherCredit(config).check(launch.openrlhf_args([*TRAIN_ARGS, *args]))


@pytest.mark.parametrize("method,extra,args", ACCEPTED)
def test_supported_combinations_pass(method, extra, args):
    config = PluginConfig(urls=("http://t:1",), method=method, **extra)
    launch.check_openrlhf_args([*TRAIN_ARGS, *args], config)
