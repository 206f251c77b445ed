"""Versioned schema. Append a migration; never edit a released one."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE studies (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            study_id INTEGER NOT NULL REFERENCES studies(id),
            status TEXT NOT NULL,            -- running | finished | stopped | failed
            stop_reason TEXT,
            seed INTEGER,
            config_json TEXT NOT NULL,
            config_path TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            total_calls INTEGER NOT NULL DEFAULT 0,
            total_cost_usd REAL NOT NULL DEFAULT 0,
            elapsed_seconds REAL NOT NULL DEFAULT 0
        );
        CREATE INDEX runs_study ON runs(study_id, id);
        CREATE TABLE test_cases (
            run_id INTEGER NOT NULL,
            case_id TEXT NOT NULL,
            input_json TEXT NOT NULL,
            expected_json TEXT,
            PRIMARY KEY (run_id, case_id)
        ) WITHOUT ROWID;
        CREATE TABLE generations (
            run_id INTEGER NOT NULL,
            number INTEGER NOT NULL,
            proposals_json TEXT NOT NULL,    -- [{config, hash, proposer}] as proposed, for exact resume
            best_score REAL,
            mean_score REAL,
            n_new INTEGER,
            started_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (run_id, number)
        ) WITHOUT ROWID;
        CREATE TABLE trials (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL,
            config_hash TEXT NOT NULL,
            generation INTEGER NOT NULL,
            proposer TEXT NOT NULL,
            config_json TEXT NOT NULL,
            status TEXT NOT NULL,            -- complete | partial | failed
            score REAL,
            metrics_json TEXT,
            normalized_json TEXT,
            cost_usd REAL,
            latency_ms REAL,
            n_cases INTEGER,
            n_errors INTEGER,
            thresholds_passed INTEGER,
            finished_at REAL,
            UNIQUE (run_id, config_hash)
        );
        CREATE TABLE case_results (
            run_id INTEGER NOT NULL,
            config_hash TEXT NOT NULL,
            case_id TEXT NOT NULL,
            output TEXT,
            error TEXT,
            latency_ms REAL,
            cost_usd REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            attempts INTEGER,
            metrics_json TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, config_hash, case_id)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        """
        CREATE TABLE run_traces (               -- where a traced run lives in Weave
            run_id INTEGER NOT NULL,
            call_id TEXT NOT NULL,              -- the Weave call id of convergence.run
            project TEXT NOT NULL,              -- entity/project
            url TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, call_id)
        ) WITHOUT ROWID;
        """,
    ),
    (
        3,
        """
        -- one owner per run at a time: a lease renewed by every commit (heartbeat)
        ALTER TABLE runs ADD COLUMN owner TEXT;            -- host:pid:token of the process running it
        ALTER TABLE runs ADD COLUMN heartbeat_at REAL;     -- last commit or heartbeat of the owner
        ALTER TABLE runs ADD COLUMN fingerprint TEXT;      -- hash of what must not change on --resume
        -- wall time of a case including retries and backoff (latency_ms is the last attempt)
        ALTER TABLE case_results ADD COLUMN wall_ms REAL;
        """,
    ),
    (
        4,
        """
        -- the agent society: what agents learn outlives a run (per study), and what each did per generation
        CREATE TABLE agent_experience (         -- an agent's replay buffer, per study, across runs
            id INTEGER PRIMARY KEY,
            study_id INTEGER NOT NULL,
            agent TEXT NOT NULL,
            run_id INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            reward REAL,
            data_json TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX agent_experience_by_agent ON agent_experience(study_id, agent, id);
        CREATE TABLE agent_memory (             -- an agent's learned state (policy, normaliser), per study
            study_id INTEGER NOT NULL,
            agent TEXT NOT NULL,
            state_json TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (study_id, agent)
        ) WITHOUT ROWID;
        CREATE TABLE society_log (              -- what each agent did in each generation
            run_id INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            agent TEXT NOT NULL,
            share REAL NOT NULL,
            asked INTEGER NOT NULL,             -- slots the agent was asked for
            proposed INTEGER NOT NULL,          -- proposals of its that were kept (new, in-space)
            status TEXT NOT NULL,               -- ok | failed | timeout | idle
            seconds REAL NOT NULL,
            detail_json TEXT,
            PRIMARY KEY (run_id, generation, agent)
        ) WITHOUT ROWID;
        """,
    ),
    (
        5,
        """
        -- self-alignment optimization (SAO): the self-judge's preference pairs, a training set that outlives runs
        CREATE TABLE sao_pairs (                -- one prompt, two responses, two judgments (A first, then swapped)
            id INTEGER PRIMARY KEY,
            study_id INTEGER NOT NULL,
            run_id INTEGER,                     -- NULL: written standalone or imported, not by a run
            generation INTEGER,                 -- the run's generation that wrote it (NULL outside a run)
            source TEXT NOT NULL,               -- loop | standalone | import
            model TEXT,                         -- the society LLM that wrote the prompt and judged
            persona TEXT,                       -- who the prompt was written as
            prompt TEXT NOT NULL,               -- the task input as text (what export writes)
            prompt_input_json TEXT,             -- the task input in the shape of the study's test cases
            response_a TEXT NOT NULL,
            response_b TEXT NOT NULL,
            config_a_json TEXT,                 -- configuration that wrote response_a (NULL standalone)
            config_b_json TEXT,
            hash_a TEXT,                        -- config hashes of A and B (the ratings' keys)
            hash_b TEXT,
            verdict_1 TEXT,                     -- A | B | tie with A shown first; NULL: unparseable
            verdict_2 TEXT,                     -- the same with B shown first, mapped back to A/B labels
            outcome TEXT NOT NULL,              -- A | B | tie | inconsistent | unparseable (the swap rule)
            failed_filters_json TEXT NOT NULL,  -- quality filters the pair failed ([]: kept if A or B)
            judgments_json TEXT,                -- the judge's raw texts, for inspection
            created_at REAL NOT NULL
        );
        CREATE INDEX sao_pairs_by_study ON sao_pairs(study_id, id);
        CREATE INDEX sao_pairs_by_run ON sao_pairs(run_id);
        CREATE TABLE sao_ratings (              -- Bradley-Terry rating of each configuration a run's judge compared
            run_id INTEGER NOT NULL,
            config_hash TEXT NOT NULL,
            strength REAL NOT NULL,             -- fitted Bradley-Terry strength
            preference REAL NOT NULL,           -- the preference score derived from it (higher: preferred)
            duels INTEGER NOT NULL,             -- judged pairs it took part in
            wins INTEGER NOT NULL,
            losses INTEGER NOT NULL,
            ties INTEGER NOT NULL,
            PRIMARY KEY (run_id, config_hash)
        ) WITHOUT ROWID;
        """,
    ),
    (
        6,
        """
        -- noise-aware selection: a case may be asked again (repeat > 0) to confirm a top configuration
        CREATE TABLE case_results_v6 (
            run_id INTEGER NOT NULL,
            config_hash TEXT NOT NULL,
            case_id TEXT NOT NULL,
            repeat INTEGER NOT NULL DEFAULT 0,  -- 0: the search's call; 1, 2 ...: confirmation draws
            output TEXT,
            error TEXT,
            latency_ms REAL,
            cost_usd REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            attempts INTEGER,
            metrics_json TEXT,
            created_at REAL NOT NULL,
            wall_ms REAL,
            PRIMARY KEY (run_id, config_hash, case_id, repeat)
        ) WITHOUT ROWID;
        INSERT INTO case_results_v6(run_id, config_hash, case_id, repeat, output, error, latency_ms, cost_usd,
            prompt_tokens, completion_tokens, attempts, metrics_json, created_at, wall_ms)
            SELECT run_id, config_hash, case_id, 0, output, error, latency_ms, cost_usd, prompt_tokens,
            completion_tokens, attempts, metrics_json, created_at, wall_ms FROM case_results;
        DROP TABLE case_results;
        ALTER TABLE case_results_v6 RENAME TO case_results;
        ALTER TABLE trials ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;  -- confirmation draws in the score
        ALTER TABLE trials ADD COLUMN estimate REAL;     -- noise-aware estimate of the true score (NULL: none)
        ALTER TABLE runs ADD COLUMN selection_json TEXT; -- how the best was chosen: top configurations, CIs, test
        -- what a society learner (society.learner) decided after each generation
        CREATE TABLE learner_log (
            run_id INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            learner TEXT NOT NULL,              -- the plugin's name
            shares_json TEXT NOT NULL,          -- the next generation's shares, by agent
            result_json TEXT NOT NULL,          -- what the learner was given (GenerationResult: per-agent results)
            detail_json TEXT,                   -- the learner's summary (algorithm, losses, prediction)
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, generation)
        ) WITHOUT ROWID;
        """,
    ),
    (
        7,
        """
        -- the society learner's decision a generation was proposed under ({decided_at, controls}), so a
        -- resumed run that restarts a generation in flight credits the decision it really ran under
        ALTER TABLE generations ADD COLUMN context_json TEXT;
        """,
    ),
    (
        8,
        """
        -- an SAO duel on a test case: which response the metrics score higher (A | B | tie; NULL: a written
        -- prompt, no reference answer), and what each side's model actually received (JSON [a, b]; NULL: unknown)
        ALTER TABLE sao_pairs ADD COLUMN reference TEXT;
        ALTER TABLE sao_pairs ADD COLUMN prompts_json TEXT;
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]
