# Training and sampling, one job each per run.


def srun_prefix(wildcards, resources, threads):
    """Start a train job of several tasks as that many JAX processes, one per task, under srun
    (they join with jax.distributed; the SLURM profile sets tasks and mpi); one task: nothing."""
    tasks = resources.get("tasks", 1)
    if tasks <= 1:
        return ""
    if resources.get("mpi") != "srun":
        raise WorkflowError(
            f"train_run: tasks={tasks} needs mpi=srun as well, so that the SLURM executor lets"
            " this job start its own tasks (profiles/slurm/profile.yaml shows both)"
        )
    return f"srun --ntasks={tasks} --cpus-per-task={threads} --kill-on-bad-exit=1 "


rule train_run:
    input:
        data=lambda w: prepared_dir(w.run),
    output:
        params=f"{RESULTS}/{{run}}/model/params.safetensors",
        config=report(
            f"{RESULTS}/{{run}}/model/config.toml",
            caption="../report/config.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "resolved config"},
        ),
        tokenizer=f"{RESULTS}/{{run}}/model/tokenizer.json",
        metrics=f"{RESULTS}/{{run}}/model/metrics.jsonl",
        provenance=f"{RESULTS}/{{run}}/model/provenance.json",
    params:
        config=lambda w: run_config(w.run),
        sections=lambda w: stage_hash(w.run, "train"),
        code=code_hash("train"),
        out=lambda w: f"{RESULTS}/{w.run}/model",
        # Checkpoints are not outputs, so a failed or killed job leaves them for the rerun to
        # resume from; the settings' hash in the path makes an edited run start afresh.
        checkpoints=lambda w: f"{RESULTS}/{w.run}/checkpoints/{stage_hash(w.run, 'train')[:10]}",
        launch=srun_prefix,
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCH}/train/{{run}}.tsv"
    threads: 4
    resources:
        gpu=0,
    shell:
        "{params.launch}python -m nanogptx.train --config {params.config} --data {input.data}"
        " --out {params.out} --checkpoints {params.checkpoints} > {log} 2>&1"


rule sample_run:
    input:
        params=rules.train_run.output.params,
        config=rules.train_run.output.config,
    output:
        samples=report(
            f"{RESULTS}/{{run}}/samples/samples.txt",
            caption="../report/samples.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "samples"},
        ),
        provenance=f"{RESULTS}/{{run}}/samples/provenance.json",
    params:
        config=lambda w: run_config(w.run),
        sections=lambda w: stage_hash(w.run, "sample"),
        code=code_hash("sample"),
        model=lambda w: f"{RESULTS}/{w.run}/model",
        out=lambda w: f"{RESULTS}/{w.run}/samples",
    log:
        f"{LOGS}/sample/{{run}}.log",
    benchmark:
        f"{BENCH}/sample/{{run}}.tsv"
    threads: 2
    resources:
        gpu=0,
    shell:
        "python -m nanogptx.sample --config {params.config} --model {params.model}"
        " --out {params.out} > {log} 2>&1"
