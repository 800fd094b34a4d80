# Training and sampling, one job each per run.


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
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCH}/train/{{run}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 4
    resources:
        gpu=0,
    params:
        config=lambda w: run_config(w.run),
        sections=lambda w: stage_hash(w.run, "train"),
        code=code_hash("train"),
        out=lambda w: f"{RESULTS}/{w.run}/model",
        # Checkpoints are not outputs, so a failed or killed job leaves them for the rerun to
        # resume from; the settings' hash in the path makes an edited run start afresh.
        checkpoints=lambda w: f"{RESULTS}/{w.run}/checkpoints/{stage_hash(w.run, 'train')[:10]}",
        launch=srun_prefix,
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
    log:
        f"{LOGS}/sample/{{run}}.log",
    benchmark:
        f"{BENCH}/sample/{{run}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        config=lambda w: run_config(w.run),
        sections=lambda w: stage_hash(w.run, "sample"),
        code=code_hash("sample"),
        model=lambda w: f"{RESULTS}/{w.run}/model",
        out=lambda w: f"{RESULTS}/{w.run}/samples",
    shell:
        "python -m nanogptx.sample --config {params.config} --model {params.model}"
        " --out {params.out} > {log} 2>&1"
