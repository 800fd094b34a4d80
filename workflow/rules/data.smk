# The data stages: hash-verified download, then sharded tokenization.


rule download_dataset:
    output:
        provenance=f"{DATA}/raw/{{dataset}}/provenance.json",
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{BENCH}/download/{{dataset}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 4
    params:
        out=lambda w: f"{DATA}/raw/{w.dataset}",
        allow=lambda w: allow_unverified_arg(w.dataset),
        lock=LOCK,
        code=code_hash("download"),
    shell:
        "python -m nanogptx.download data.dataset={wildcards.dataset} {params.allow}"
        " --out {params.out} --lock {params.lock} --threads {threads}"
        " > {log} 2>&1"


rule prepare_dataset:
    input:
        raw=lambda w: raw_provenance(DATA_RUN[w.data_id]),
    output:
        prepared=directory(f"{DATA}/prepared/{{data_id}}"),
    log:
        f"{LOGS}/prepare/{{data_id}}.log",
    benchmark:
        f"{BENCH}/prepare/{{data_id}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 4
    params:
        config=lambda w: run_config(DATA_RUN[w.data_id]),
        raw=lambda w: Path(raw_provenance(DATA_RUN[w.data_id])).parent,
        code=code_hash("prepare"),
    shell:
        "python -m nanogptx.prepare --config {params.config} --raw {params.raw}"
        " --out {output.prepared} --threads {threads} > {log} 2>&1"
