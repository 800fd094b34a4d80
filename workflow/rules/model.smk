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
        **setting_params("train"),
        config=lambda w: run_config(w.run),
        code=code_hash("train"),
        out=lambda w: f"{RESULTS}/{w.run}/model",
        # Checkpoints are not outputs, so a failed or killed job leaves them for the rerun to
        # resume from; named by what a resume must share, so an extended run resumes there.
        checkpoints=checkpoint_dir,
        launch=srun_prefix,
    shell:
        "{params.launch}python -m nanogptx.train --config {params.config:q}"
        " --data {input.data:q} --out {params.out:q} --checkpoints {params.checkpoints:q}"
        " > {log:q} 2>&1"


rule sample_run:
    input:
        params=rules.train_run.output.params,
        config=rules.train_run.output.config,
        tokenizer=rules.train_run.output.tokenizer,
        provenance=rules.train_run.output.provenance,
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
        **setting_params("sample"),
        config=lambda w: run_config(w.run),
        code=code_hash("sample"),
        model=lambda w, input: Path(input.params).parent,
        out=lambda w: f"{RESULTS}/{w.run}/samples",
    shell:
        "python -m nanogptx.sample --config {params.config:q} --model {params.model:q}"
        " --out {params.out:q} > {log:q} 2>&1"
