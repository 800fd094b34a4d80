# The data stages: hash-verified download (of text, pretrained weights and evaluation data),
# then sharded tokenization.


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
        **stage_params("download", run_file=False),
        out=lambda w: f"{DATA}/raw/{w.dataset}",
        allow=allow_unverified_arg,
        lock=LOCK,
        entry=dataset_entry,
        # The files on disk by content: a param, not an input, so that a new modification time
        # of the same bytes reruns nothing (an input would rerun download and all after it).
        local=local_files,
        # Progress lines to snakemake's terminal (fd 3), as train's; the full log to the file
        # (its path is in snakemake's job description; not here: a param compared for reruns).
        label=lambda w: f"download {w.dataset}",
    shell:
        "python -m nanogptx.download --dataset {wildcards.dataset:q} {params.allow}"
        " --out {params.out:q} --lock {params.lock:q} --threads {threads}"
        " --progress-fd 3 --progress-label {params.label:q} 3>&2 > {log:q} 2>&1"


# A prepared dataset is named and compared by its data settings alone (data_id), never by which
# run asked for it: any selection of runs sharing it finds it up to date.
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
        **stage_params("prepare", lambda w: DATA_RUN[w.data_id], run_file=False),
        settings=prepare_args,
        raw=lambda w, input: Path(input.raw).parent,
        label=lambda w: f"prepare {w.data_id}",
    shell:
        "python -m nanogptx.prepare {params.settings} --raw {params.raw:q}"
        " --out {output.prepared:q} --threads {threads}"
        " --progress-fd 3 --progress-label {params.label:q} 3>&2 > {log:q} 2>&1"
