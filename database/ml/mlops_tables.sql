-- ml_observability_spans: the observability connector's span table, its indexes, the latency
-- view, the metric / retention functions (the RPC contract of the Supabase REST backend) and
-- the lock-down for Supabase's API roles.
--
-- Requirements and guarantees
--   * PostgreSQL 15 or newer (views WITH (security_invoker = true)).
--   * Safe to apply any number of times: everything is IF NOT EXISTS / OR REPLACE / guarded, and
--     the whole file runs in one transaction under an advisory lock, so two concurrent
--     `obs-connector migrate` runs cannot interleave and a failure leaves nothing half-done.
--   * Applies to a plain Postgres too: the Supabase roles (anon, authenticated, service_role) are
--     touched only when they exist (DO blocks checking pg_roles). Apply it again after creating
--     them to add their grants and policy.
--   * Why the lock-down: Supabase exposes every table, view and function of `public` through
--     PostgREST, and its default privileges GRANT ALL on new objects to anon and authenticated.
--     RLS is enabled with one policy for service_role; every privilege is revoked from anon,
--     authenticated and PUBLIC. The view is security_invoker: a plain view runs with its
--     owner's rights and would let anon read every row past RLS (measured, see DESIGN.md).
--
-- Apply with `obs-connector migrate` (OBS_DATABASE_URL / DATABASE_URL) or
-- `psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f database/ml/mlops_tables.sql`.

BEGIN;

DO $guard$
BEGIN
    IF current_setting('server_version_num')::int < 150000 THEN
        RAISE EXCEPTION 'ml_observability_spans needs PostgreSQL 15 or newer (security_invoker views); this server is %',
            current_setting('server_version');
    END IF;
    -- Serialise concurrent migrations (CREATE INDEX IF NOT EXISTS can race otherwise).
    PERFORM pg_advisory_xact_lock(hashtext('ml_observability_spans schema'));
END
$guard$;

-- --------------------------------------------------------------------------- the table

CREATE TABLE IF NOT EXISTS public.ml_observability_spans (
    id              uuid             NOT NULL DEFAULT gen_random_uuid(),
    span_id         text             NOT NULL CHECK (length(span_id) > 0),
    trace_id        text             NOT NULL CHECK (length(trace_id) > 0),
    parent_span_id  text,
    operation_name  text             NOT NULL,
    agent_name      text             NOT NULL,
    agent_tier      integer          NOT NULL DEFAULT -1,
    start_time      timestamptz      NOT NULL,
    end_time        timestamptz,
    -- double precision, not numeric: percentile_cont works on float8 anyway, and every
    -- decimal duration a span can carry (a Python float) round-trips exactly.
    duration_ms     double precision CHECK (duration_ms IS NULL OR duration_ms >= 0),
    status          text             NOT NULL
                    CONSTRAINT ml_observability_spans_status_check
                    CHECK (status IN ('ok', 'error', 'timeout', 'started')),
    error_type      text,
    error_message   text,
    attributes      jsonb            NOT NULL DEFAULT '{}'::jsonb,
    llm_model       text,
    input_tokens    integer          CHECK (input_tokens IS NULL OR input_tokens >= 0),
    output_tokens   integer          CHECK (output_tokens IS NULL OR output_tokens >= 0),
    total_tokens    integer          CHECK (total_tokens IS NULL OR total_tokens >= 0),
    events          jsonb            NOT NULL DEFAULT '[]'::jsonb,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    -- USD of an LLM call, priced by the connector's row builder (pricing.py); null: not an LLM
    -- call, or an unknown model (counted as unpriced, never as free).
    cost_usd        double precision CHECK (cost_usd IS NULL OR cost_usd >= 0),
    CONSTRAINT ml_observability_spans_pkey PRIMARY KEY (id),
    -- Idempotent writes: every backend inserts with ON CONFLICT (trace_id, span_id) DO NOTHING.
    CONSTRAINT ml_observability_spans_trace_span_key UNIQUE (trace_id, span_id)
);

-- A table created earlier by other tooling may lack the key the idempotent writes rely on.
DO $key$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'public.ml_observability_spans'::regclass AND contype IN ('u', 'p')
          AND pg_get_constraintdef(oid) = 'UNIQUE (trace_id, span_id)'
    ) THEN
        ALTER TABLE public.ml_observability_spans
            ADD CONSTRAINT ml_observability_spans_trace_span_key UNIQUE (trace_id, span_id);
    END IF;
END
$key$;

-- A table created before `timeout` was a status refuses it: replace its status CHECK with the
-- current one (once; the widened constraint passes the guard on every later run). Every CHECK
-- that involves only the status column is replaced, whatever it was named.
DO $status$
DECLARE
    status_attnum smallint;
    old_check text;
BEGIN
    SELECT attnum INTO status_attnum FROM pg_attribute
    WHERE attrelid = 'public.ml_observability_spans'::regclass AND attname = 'status' AND NOT attisdropped;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'public.ml_observability_spans'::regclass AND contype = 'c'
          AND conname = 'ml_observability_spans_status_check'
          AND pg_get_constraintdef(oid) LIKE '%''timeout''%'
    ) THEN
        FOR old_check IN
            SELECT conname FROM pg_constraint
            WHERE conrelid = 'public.ml_observability_spans'::regclass AND contype = 'c'
              AND conkey = ARRAY[status_attnum]
        LOOP
            EXECUTE format('ALTER TABLE public.ml_observability_spans DROP CONSTRAINT %I', old_check);
        END LOOP;
        ALTER TABLE public.ml_observability_spans
            ADD CONSTRAINT ml_observability_spans_status_check
            CHECK (status IN ('ok', 'error', 'timeout', 'started'));
    END IF;
END
$status$;

-- Columns added after the table's first release. A nullable column without a default is a
-- catalogue change (no table rewrite), so this is instant on a table of any size; existing rows
-- read it as null.
ALTER TABLE public.ml_observability_spans
    ADD COLUMN IF NOT EXISTS cost_usd double precision CHECK (cost_usd IS NULL OR cost_usd >= 0);

-- Conversation columns (issue 19), added to a table of any earlier version; all nullable.
-- thread_id: LangGraph's configurable.thread_id or the caller's; tags: text[] (the SQLite store
-- keeps a JSON array); ttft_ms: time to first token of a streaming LLM call. When they are added
-- to a table that holds spans, the values earlier releases kept only as attributes (the callback
-- handler's langgraph.thread_id and llm.time_to_first_token_ms) are copied into them, once: the
-- guard makes every later run skip the scan.
DO $conversation$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'public.ml_observability_spans'::regclass AND attname = 'thread_id' AND NOT attisdropped
    ) THEN
        ALTER TABLE public.ml_observability_spans
            ADD COLUMN IF NOT EXISTS thread_id text,
            ADD COLUMN IF NOT EXISTS ttft_ms   double precision;
        UPDATE public.ml_observability_spans
           SET thread_id = CASE WHEN jsonb_typeof(attributes -> 'langgraph.thread_id') IN ('string', 'number')
                                THEN attributes ->> 'langgraph.thread_id' END,
               ttft_ms = CASE WHEN jsonb_typeof(attributes -> 'llm.time_to_first_token_ms') = 'number'
                               AND (attributes ->> 'llm.time_to_first_token_ms')::double precision >= 0
                              THEN (attributes ->> 'llm.time_to_first_token_ms')::double precision END
         WHERE attributes ? 'langgraph.thread_id' OR attributes ? 'llm.time_to_first_token_ms';
    END IF;
END
$conversation$;

ALTER TABLE public.ml_observability_spans
    ADD COLUMN IF NOT EXISTS thread_id text,
    ADD COLUMN IF NOT EXISTS user_id   text,
    ADD COLUMN IF NOT EXISTS tags      text[],
    ADD COLUMN IF NOT EXISTS ttft_ms   double precision;

DO $ttft$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'public.ml_observability_spans'::regclass
          AND conname = 'ml_observability_spans_ttft_ms_check'
    ) THEN
        ALTER TABLE public.ml_observability_spans
            ADD CONSTRAINT ml_observability_spans_ttft_ms_check CHECK (ttft_ms IS NULL OR ttft_ms >= 0);
    END IF;
END
$ttft$;

COMMENT ON TABLE public.ml_observability_spans IS
    'One row per span of the 18 agents (observability connector). Unique on (trace_id, span_id); '
    'RLS: service_role only.';

-- --------------------------------------------------------------------------- indexes
-- trace_id:   served by the UNIQUE (trace_id, span_id) index (trace_id leads it); a separate
--             single-column index would be a redundant copy that every insert maintains.
-- agent_name: served by idx_ml_observability_spans_agent_start (agent_name leads it).
-- start_time: windows across all agents, retention (ORDER BY start_time LIMIT n).
-- status:     (status, start_time) — "errors in the last hour" without scanning the window.
-- composite:  per-agent window queries answered from the index alone (index-only scans). The
--             token columns are INCLUDEd beside (duration_ms, status) because obs_latency_stats
--             sums them: without them every row of the window is fetched from the heap, which
--             measured 4x slower (24 h over 1M spans: ~220 ms against ~50 ms).

CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_start_time
    ON public.ml_observability_spans (start_time);

CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_status_start
    ON public.ml_observability_spans (status, start_time);

CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_agent_start
    ON public.ml_observability_spans (agent_name, start_time)
    INCLUDE (duration_ms, status, input_tokens, output_tokens, total_tokens);

-- Conversations (partial: most spans have no thread, user or time to first token, and those
-- rows cost these indexes nothing): `trace --thread`, metrics filtered by thread or user, and
-- the TTFT percentiles (the newest TTFT rows of a window, from the index alone: INCLUDE).
CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_thread_start
    ON public.ml_observability_spans (thread_id, start_time) WHERE thread_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_user_start
    ON public.ml_observability_spans (user_id, start_time) WHERE user_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_ml_observability_spans_ttft_start
    ON public.ml_observability_spans (start_time) INCLUDE (agent_name, llm_model, ttft_ms) WHERE ttft_ms IS NOT NULL;

-- --------------------------------------------------------------------------- functions
-- Semantics shared with the SQLite backend (src/repositories/sqlite.py), so every backend gives
-- the same numbers for the same rows:
--   * window: start_time >= p_since (no upper bound); p_agent / p_trace filter when not null;
--   * count covers every status; latency figures only rows with a duration;
--   * percentiles are continuous (percentile_cont); error_rate = errors / count (every status,
--     the host's definition: a timeout or a started span is not an error), 0 without rows;
--     the backends derive it from the counts the same way (models.error_rate);
--   * fallback: attributes.fallback_used is truthy in Python's sense (true, a non-zero number, a
--     non-empty string / array / object).
-- All are SECURITY INVOKER (callers see only what RLS and their grants allow) with a fixed
-- search_path; plan_cache_mode = force_custom_plan plans each call with its actual window, so a
-- generic plan never scans the whole table for a one-hour window.

-- obs_latency_stats(p_since, p_agent, p_trace, p_group) -> one row per group, ordered by key
-- (agents by byte order, tiers numerically), none when the window is empty:
--   key text            agent_name | agent_tier as text | 'all'     (p_group 'agent' | 'tier' | 'all')
--   count bigint, avg_ms / p50_ms / p95_ms / p99_ms double precision (null without durations),
--   error_count bigint, error_rate double precision,
--   input_tokens / output_tokens / total_tokens bigint (sums, nulls as 0)
CREATE OR REPLACE FUNCTION public.obs_latency_stats(
    p_since timestamptz,
    p_agent text DEFAULT NULL,
    p_trace text DEFAULT NULL,
    p_group text DEFAULT 'agent'
)
RETURNS TABLE (
    key text,
    count bigint,
    avg_ms double precision,
    p50_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    error_count bigint,
    error_rate double precision,
    input_tokens bigint,
    output_tokens bigint,
    total_tokens bigint
)
LANGUAGE plpgsql
STABLE
SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    agent_list text[];
    agent text;
    parts text[] := ARRAY[]::text[];
BEGIN
    IF p_since IS NULL THEN
        RAISE EXCEPTION 'obs_latency_stats: p_since must not be null' USING ERRCODE = '22004';
    END IF;
    IF p_group IS NULL OR p_group NOT IN ('agent', 'tier', 'all') THEN
        RAISE EXCEPTION 'obs_latency_stats: p_group must be agent, tier or all, got %', p_group
            USING ERRCODE = '22023';
    END IF;

    IF p_group = 'agent' AND p_agent IS NULL AND p_trace IS NULL THEN
        -- Per-agent fast path. The distinct agents come from a loose index scan (one probe each);
        -- each agent is then answered from its own slice of the composite index (an index-only
        -- scan and one small sort, instead of one big sort of the whole window), and the slices
        -- are one UNION ALL, so Postgres runs them side by side in parallel workers (Parallel
        -- Append). Measured on 1M spans / 7 days, 2 cores: ~215 ms against ~300 ms one agent after
        -- another and ~650 ms for a plain GROUP BY (benchmarks/bench_store.py).
        WITH RECURSIVE agents(a) AS (
            (SELECT s.agent_name FROM ml_observability_spans s ORDER BY s.agent_name LIMIT 1)
            UNION ALL
            SELECT (SELECT s.agent_name FROM ml_observability_spans s
                    WHERE s.agent_name > agents.a ORDER BY s.agent_name LIMIT 1)
            FROM agents WHERE agents.a IS NOT NULL
        )
        SELECT array_agg(agents.a) INTO agent_list FROM agents WHERE agents.a IS NOT NULL;
        IF agent_list IS NULL THEN
            RETURN;
        END IF;
        IF cardinality(agent_list) <= 64 THEN  -- beyond that, planning the union costs more than it saves
            FOREACH agent IN ARRAY agent_list LOOP
                parts := parts || format(
                    $q$SELECT %L::text AS k, count(*) AS n, avg(s.duration_ms) AS avg_d,
                              percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY s.duration_ms) AS pct,
                              count(*) FILTER (WHERE s.status = 'error') AS n_error,
                              sum(s.input_tokens) AS tok_in, sum(s.output_tokens) AS tok_out,
                              sum(s.total_tokens) AS tok_total
                       FROM public.ml_observability_spans s
                       WHERE s.agent_name = %L AND s.start_time >= $1$q$,
                    agent, agent);
            END LOOP;
            RETURN QUERY EXECUTE format(
                $q$SELECT g.k, g.n, g.avg_d, g.pct[1], g.pct[2], g.pct[3], g.n_error,
                          g.n_error::double precision / g.n,
                          coalesce(g.tok_in, 0)::bigint, coalesce(g.tok_out, 0)::bigint,
                          coalesce(g.tok_total, 0)::bigint
                   FROM (%s) g WHERE g.n > 0 ORDER BY g.k COLLATE "C"$q$,
                array_to_string(parts, ' UNION ALL '))
            USING p_since;
            RETURN;
        END IF;
        RETURN QUERY
        SELECT a.agent, g.n, g.avg_d, g.pct[1], g.pct[2], g.pct[3], g.n_error,
               g.n_error::double precision / g.n,
               g.tok_in, g.tok_out, g.tok_total
        FROM unnest(agent_list) AS a(agent)
        CROSS JOIN LATERAL (
            SELECT count(*) AS n,
                   avg(s.duration_ms) AS avg_d,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY s.duration_ms) AS pct,
                   count(*) FILTER (WHERE s.status = 'error') AS n_error,
                   coalesce(sum(s.input_tokens), 0)::bigint AS tok_in,
                   coalesce(sum(s.output_tokens), 0)::bigint AS tok_out,
                   coalesce(sum(s.total_tokens), 0)::bigint AS tok_total
            FROM ml_observability_spans s
            WHERE s.agent_name = a.agent AND s.start_time >= p_since
        ) g
        WHERE g.n > 0
        ORDER BY a.agent COLLATE "C";
        RETURN;
    END IF;

    RETURN QUERY
    SELECT b.k,
           count(*),
           avg(b.d),
           (percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY b.d))[1],
           (percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY b.d))[2],
           (percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY b.d))[3],
           count(*) FILTER (WHERE b.st = 'error'),
           count(*) FILTER (WHERE b.st = 'error')::double precision / count(*),
           coalesce(sum(b.ti), 0)::bigint,
           coalesce(sum(b.tout), 0)::bigint,
           coalesce(sum(b.tt), 0)::bigint
    FROM (
        SELECT CASE p_group WHEN 'agent' THEN s.agent_name
                            WHEN 'tier' THEN s.agent_tier::text
                            ELSE 'all' END AS k,
               s.duration_ms AS d, s.status AS st,
               s.input_tokens AS ti, s.output_tokens AS tout, s.total_tokens AS tt
        FROM ml_observability_spans s
        WHERE s.start_time >= p_since
          AND (p_agent IS NULL OR s.agent_name = p_agent)
          AND (p_trace IS NULL OR s.trace_id = p_trace)
    ) b
    GROUP BY b.k
    ORDER BY CASE WHEN p_group = 'tier' THEN b.k::integer END, b.k COLLATE "C";
END
$fn$;

COMMENT ON FUNCTION public.obs_latency_stats(timestamptz, text, text, text) IS
    'Latency per agent / tier / all since p_since: (key, count, avg_ms, p50_ms, p95_ms, p99_ms, '
    'error_count, error_rate, input_tokens, output_tokens, total_tokens). Continuous percentiles; '
    'error_rate = errors / count (timeouts are not errors).';

-- obs_status_distribution(p_since, p_agent, p_trace) -> (status text, n bigint), one row per status
-- present in the window (absent statuses have no row).
CREATE OR REPLACE FUNCTION public.obs_status_distribution(
    p_since timestamptz,
    p_agent text DEFAULT NULL,
    p_trace text DEFAULT NULL
)
RETURNS TABLE (status text, n bigint)
LANGUAGE plpgsql
STABLE
SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
BEGIN
    IF p_since IS NULL THEN
        RAISE EXCEPTION 'obs_status_distribution: p_since must not be null' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
    SELECT s.status, count(*)
    FROM ml_observability_spans s
    WHERE s.start_time >= p_since
      AND (p_agent IS NULL OR s.agent_name = p_agent)
      AND (p_trace IS NULL OR s.trace_id = p_trace)
    GROUP BY s.status
    ORDER BY s.status COLLATE "C";
END
$fn$;

COMMENT ON FUNCTION public.obs_status_distribution(timestamptz, text, text) IS
    'Span count per status since p_since: (status, n).';

-- obs_quality_counts(p_since, p_agent, p_trace) -> exactly one row (zeros / nulls when empty):
--   total, ok_count, error_count, timeout_count, started_count, fallback_count bigint,
--   p50_ms, p95_ms, p99_ms, avg_ms double precision
-- The four status counts sum to total. Rates are derived by the callers (QualityMetrics.from_counts).
-- A version without timeout_count has another result type, which CREATE OR REPLACE cannot
-- change: drop it first (only then, so an up-to-date schema keeps its function and grants).
DO $quality$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
        WHERE ns.nspname = 'public' AND p.proname = 'obs_quality_counts'
          AND NOT ('timeout_count' = ANY (coalesce(p.proargnames, ARRAY[]::text[])))
    ) THEN
        DROP FUNCTION public.obs_quality_counts(timestamptz, text, text);
    END IF;
END
$quality$;

CREATE OR REPLACE FUNCTION public.obs_quality_counts(
    p_since timestamptz,
    p_agent text DEFAULT NULL,
    p_trace text DEFAULT NULL
)
RETURNS TABLE (
    total bigint,
    ok_count bigint,
    error_count bigint,
    timeout_count bigint,
    started_count bigint,
    fallback_count bigint,
    p50_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    avg_ms double precision
)
LANGUAGE plpgsql
STABLE
SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
BEGIN
    IF p_since IS NULL THEN
        RAISE EXCEPTION 'obs_quality_counts: p_since must not be null' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
    SELECT q.total, q.ok_count, q.error_count, q.timeout_count, q.started_count, q.fallback_count,
           q.pct[1], q.pct[2], q.pct[3], q.avg_d
    FROM (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE s.status = 'ok') AS ok_count,
               count(*) FILTER (WHERE s.status = 'error') AS error_count,
               count(*) FILTER (WHERE s.status = 'timeout') AS timeout_count,
               count(*) FILTER (WHERE s.status = 'started') AS started_count,
               count(*) FILTER (WHERE
                   CASE jsonb_typeof(s.attributes -> 'fallback_used')
                       WHEN 'boolean' THEN (s.attributes -> 'fallback_used')::boolean
                       WHEN 'number'  THEN (s.attributes -> 'fallback_used')::numeric <> 0
                       WHEN 'string'  THEN (s.attributes ->> 'fallback_used') <> ''
                       WHEN 'array'   THEN jsonb_array_length(s.attributes -> 'fallback_used') > 0
                       WHEN 'object'  THEN (s.attributes -> 'fallback_used') <> '{}'::jsonb
                       ELSE false
                   END) AS fallback_count,
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY s.duration_ms) AS pct,
               avg(s.duration_ms) AS avg_d
        FROM ml_observability_spans s
        WHERE s.start_time >= p_since
          AND (p_agent IS NULL OR s.agent_name = p_agent)
          AND (p_trace IS NULL OR s.trace_id = p_trace)
    ) q;
END
$fn$;

COMMENT ON FUNCTION public.obs_quality_counts(timestamptz, text, text) IS
    'System-wide counts since p_since, one row: (total, ok_count, error_count, timeout_count, '
    'started_count, fallback_count, p50_ms, p95_ms, p99_ms, avg_ms). fallback = attributes.fallback_used truthy.';

-- obs_delete_old_spans(p_cutoff, p_batch) -> integer: deletes at most p_batch rows that started
-- before p_cutoff, oldest first, and returns how many went; call it until it returns less than
-- p_batch. One short transaction per call, so writers are never blocked for long. Ordered by
-- start_time through its index: ordering a limited delete by the uuid key was ~40x slower
-- (DESIGN.md); rows are addressed by ctid (a TID scan, no second index lookup).
CREATE OR REPLACE FUNCTION public.obs_delete_old_spans(p_cutoff timestamptz, p_batch integer)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    deleted integer;
BEGIN
    IF p_cutoff IS NULL THEN
        RAISE EXCEPTION 'obs_delete_old_spans: p_cutoff must not be null' USING ERRCODE = '22004';
    END IF;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'obs_delete_old_spans: p_batch must be at least 1, got %', p_batch USING ERRCODE = '22023';
    END IF;
    DELETE FROM ml_observability_spans
    WHERE ctid = ANY (ARRAY(
        SELECT s.ctid FROM ml_observability_spans s
        WHERE s.start_time < p_cutoff
        ORDER BY s.start_time
        LIMIT p_batch
    ));
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$fn$;

COMMENT ON FUNCTION public.obs_delete_old_spans(timestamptz, integer) IS
    'Retention: delete up to p_batch spans with start_time < p_cutoff, oldest first; returns the count.';

-- --------------------------------------------------------------------------- the view
-- Per agent over the last 24 hours. security_invoker: read with the caller's rights, so RLS and
-- the revokes below hold through the view too. Defined over obs_latency_stats so the view, the
-- RPC and the Postgres backend share one definition (and its per-agent fast path).
CREATE OR REPLACE VIEW public.v_agent_latency_summary
WITH (security_invoker = true) AS
SELECT st.key AS agent_name,
       st.count AS span_count,
       st.avg_ms,
       st.p50_ms,
       st.p95_ms,
       st.p99_ms,
       st.error_count,
       st.error_rate,
       st.input_tokens,
       st.output_tokens,
       st.total_tokens
FROM public.obs_latency_stats(now() - interval '24 hours') AS st;

COMMENT ON VIEW public.v_agent_latency_summary IS
    'Per agent, last 24 h: span_count, avg/p50/p95/p99 duration_ms, error_count, error_rate '
    '(errors / span_count), token sums. security_invoker; for other windows call obs_latency_stats.';

-- --------------------------------------------------------------------------- rollups
-- Per time bucket (level 0 minute, 1 hour, 2 day; UTC) and (agent_name, agent_tier): counts by
-- status, fallbacks, token sums, the duration count and sum, the cost figures, and a latency
-- sketch (DDSketch-style log buckets with relative accuracy 1 %, idx = ceil(ln(d) / ln(1.01/0.99)),
-- zero durations counted apart; the same definition as src/.../latency_sketch.py). Sketches are
-- (idxs, ns) pairs of int4[]: an index may appear more than once and counts may be negative;
-- readers always sum per index.
--
-- What a write pays, and what is built later (the "sealed" past):
--   * the write path (statement-level triggers with transition tables, so every writer counts:
--     COPY, INSERT ... ON CONFLICT DO NOTHING (only rows actually inserted reach NEW TABLE),
--     PostgREST, obs_delete_old_spans) keeps MINUTE rows only: level 0 of ml_span_rollups and
--     ml_span_rollup_sketch;
--   * obs_rollup_seal moves a frontier (ml_span_rollup_state.sealed_to, a whole UTC hour, 5
--     minutes behind the clock) forward an hour at a time and builds, for every hour it passes,
--     the hour's figure row (level 1), the day's row (level 2) once the day is passed, and the
--     latency PREFIX at the new hour boundary b (ml_span_rollup_prefix: per (agent, tier), the
--     sketch of every span with start_time < b, compacted to distinct indexes). Readers call it
--     (the first question after an hour turns pays for it, ~ms per agent); it is idempotent;
--   * a write into the sealed past (a late span, a replay of an old batch, a retention cleanup,
--     an update) also corrects the sealed rows, exactly: the hour and day figure rows it falls
--     in, and the prefixes: an insert at hour x adds its sketch to every prefix after x (these
--     are recent, so few rows), a delete at hour x adds what it removed to every prefix at or
--     before x (cleanups delete the oldest rows, so again few rows; the '-infinity' row stands
--     for every boundary before an agent's first stored prefix). Only differences of prefixes
--     are ever read, and both rules keep every difference P(b2) - P(b1) equal to the raw rows
--     of [b1, b2).
-- Why prefixes: a window [p_since, ∞) needs the latency sketch of [h, sealed_to) merged per
-- agent; as a difference of two prefixes that is 2 arrays per agent whatever the window's
-- length, where summing hour and day sketches was ~50 (7 days) to ~700 (30 days) arrays of a few
-- hundred pairs per agent (measured: benchmarks/README.md, issue 16).
-- Rows are ordered before each upsert so concurrent writers lock buckets in one order (no
-- deadlock). Writers hold a shared advisory lock (key 7_160_016) for their transaction and the
-- sealer an exclusive one, so a seal never reads minutes a writer has yet to commit.
-- Rollups from before cost was summed (no cost_sum column) are dropped and rebuilt from the raw
-- rows by the back-fill below (one-off, proportional to the table; writers wait for it): the
-- old buckets cannot say how many of their LLM calls were unpriced. Their policies and grants
-- are created again further down.
DO $rollup_cost$
BEGIN
    IF to_regclass('public.ml_span_rollups') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass('public.ml_span_rollups') AND attname = 'cost_sum' AND NOT attisdropped
    ) THEN
        DROP TABLE public.ml_span_rollups;
        DROP TABLE IF EXISTS public.ml_span_rollup_sketch;
    END IF;
    IF EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
        WHERE ns.nspname = 'public' AND p.proname = 'obs_rollup_metrics'
          AND NOT ('cost_sum' = ANY (coalesce(p.proargnames, ARRAY[]::text[])))
    ) THEN
        DROP FUNCTION public.obs_rollup_metrics(timestamptz, text);
    END IF;
    -- Rollups from before the seal (hour and day rows kept on every write): their minute rows
    -- are complete; the hour and day rows are built again by the first seal below.
    IF to_regclass('public.ml_span_rollups') IS NOT NULL AND to_regclass('public.ml_span_rollup_prefix') IS NULL THEN
        DELETE FROM public.ml_span_rollups WHERE level > 0;
        DELETE FROM public.ml_span_rollup_sketch WHERE level > 0;
    END IF;
    DROP FUNCTION IF EXISTS public.obs_rollup_statements(text, integer);
END
$rollup_cost$;

CREATE TABLE IF NOT EXISTS public.ml_span_rollups (
    level       smallint         NOT NULL,
    bucket      timestamptz      NOT NULL,
    agent_name  text             NOT NULL,
    agent_tier  integer          NOT NULL,
    n_all       bigint           NOT NULL,
    n_ok        bigint           NOT NULL,
    n_error     bigint           NOT NULL,
    n_timeout   bigint           NOT NULL,
    n_started   bigint           NOT NULL,
    n_fallback  bigint           NOT NULL,
    tok_in      bigint           NOT NULL,
    tok_out     bigint           NOT NULL,
    tok_total   bigint           NOT NULL,
    dur_n       bigint           NOT NULL,
    dur_sum     double precision NOT NULL,
    cost_sum    double precision NOT NULL DEFAULT 0,  -- USD of the bucket's priced LLM calls
    n_unpriced  bigint           NOT NULL DEFAULT 0,  -- LLM calls (llm_model set) without a cost
    CONSTRAINT ml_span_rollups_pkey PRIMARY KEY (level, bucket, agent_name, agent_tier)
);

-- Minute sketches (level 0 only since the seal).
CREATE TABLE IF NOT EXISTS public.ml_span_rollup_sketch (
    level       smallint    NOT NULL,
    bucket      timestamptz NOT NULL,
    agent_name  text        NOT NULL,
    agent_tier  integer     NOT NULL,
    idxs        integer[]   NOT NULL,
    ns          integer[]   NOT NULL,
    zeros       bigint      NOT NULL,
    CONSTRAINT ml_span_rollup_sketch_pkey PRIMARY KEY (level, bucket, agent_name, agent_tier)
);

-- array_send of an integer[] (its binary wire form), declared IMMUTABLE so a stored generated
-- column can keep it: int4's binary form never changes, but array_send is marked STABLE as it
-- dispatches on the element type. Harmless to anyone, so EXECUTE stays with PUBLIC (the rollup
-- triggers, which update prefixes on a late write, run as the writing role).
CREATE OR REPLACE FUNCTION public.obs_int_array_send(p_values integer[])
RETURNS bytea
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = public
AS $fn$ SELECT array_send(p_values) $fn$;

-- Latency prefixes at sealed hour boundaries (see above); boundary '-infinity' is the value of
-- every boundary before the agent's first stored one. Boundary first in the key: readers and the
-- seal ask for one or two boundaries across all agents. idxs_send / ns_send: the arrays in
-- array_send form, computed once when a prefix is written: a reader ships them as they are
-- instead of converting every prefix on every question (what that cost: benchmarks/README).
CREATE TABLE IF NOT EXISTS public.ml_span_rollup_prefix (
    boundary    timestamptz NOT NULL,
    agent_name  text        NOT NULL,
    agent_tier  integer     NOT NULL,
    idxs        integer[]   NOT NULL,
    ns          integer[]   NOT NULL,
    zeros       bigint      NOT NULL,
    CONSTRAINT ml_span_rollup_prefix_pkey PRIMARY KEY (boundary, agent_name, agent_tier)
);
ALTER TABLE public.ml_span_rollup_prefix
    ADD COLUMN IF NOT EXISTS idxs_send bytea GENERATED ALWAYS AS (public.obs_int_array_send(idxs)) STORED,
    ADD COLUMN IF NOT EXISTS ns_send   bytea GENERATED ALWAYS AS (public.obs_int_array_send(ns)) STORED;

-- The frontier: every hour before sealed_to has its hour row and prefix (null: nothing sealed).
CREATE TABLE IF NOT EXISTS public.ml_span_rollup_state (
    id          boolean     NOT NULL DEFAULT true CHECK (id),
    sealed_to   timestamptz,
    CONSTRAINT ml_span_rollup_state_pkey PRIMARY KEY (id)
);
INSERT INTO public.ml_span_rollup_state (id, sealed_to) VALUES (true, NULL) ON CONFLICT (id) DO NOTHING;

-- Sums (idxs, ns) per index when the arrays pass 2,048 pairs (or always, p_always), dropping
-- indexes whose counts cancel; otherwise returns them as they are (a write costs no per-index work).
CREATE OR REPLACE FUNCTION public.obs_pairs_merge(p_idxs integer[], p_ns integer[], p_always boolean)
RETURNS TABLE (idxs integer[], ns integer[])
LANGUAGE sql
IMMUTABLE
SET search_path = public
AS $fn$
SELECT CASE WHEN NOT p_always AND cardinality(p_idxs) <= 2048 THEN p_idxs
            ELSE (SELECT coalesce(array_agg(x.i ORDER BY x.i), '{}'::integer[]) FROM (
                      SELECT u.i FROM unnest(p_idxs, p_ns) AS u (i, n) GROUP BY u.i HAVING sum(u.n) <> 0) AS x) END,
       CASE WHEN NOT p_always AND cardinality(p_idxs) <= 2048 THEN p_ns
            ELSE (SELECT coalesce(array_agg(x.s ORDER BY x.i), '{}'::integer[]) FROM (
                      SELECT u.i, sum(u.n)::integer AS s FROM unnest(p_idxs, p_ns) AS u (i, n)
                      GROUP BY u.i HAVING sum(u.n) <> 0) AS x) END
$fn$;

-- The statements that add (p_sign 1) or subtract (-1) the rows of p_source (a transition table
-- or a subquery) to the minute rows, and to the hour and day figure rows already sealed
-- (bucket end <= p_sealed): one definition for the delete / update trigger, late inserts and
-- rebuilds. The prefixes are corrected by obs_rollup_prefix_statements.
CREATE OR REPLACE FUNCTION public.obs_rollup_statements(p_source text, p_sign integer, p_sealed timestamptz)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
SET search_path = public
AS $fn$
SELECT ARRAY[
    format($q$
INSERT INTO public.ml_span_rollups AS r (level, bucket, agent_name, agent_tier, n_all, n_ok, n_error,
    n_timeout, n_started, n_fallback, tok_in, tok_out, tok_total, dur_n, dur_sum, cost_sum, n_unpriced)
SELECT l.level, date_trunc(l.unit, s.start_time, 'UTC'), s.agent_name, s.agent_tier,
       %2$s * count(*), %2$s * count(*) FILTER (WHERE s.status = 'ok'),
       %2$s * count(*) FILTER (WHERE s.status = 'error'), %2$s * count(*) FILTER (WHERE s.status = 'timeout'),
       %2$s * count(*) FILTER (WHERE s.status = 'started'),
       %2$s * count(*) FILTER (WHERE CASE jsonb_typeof(s.attributes -> 'fallback_used')
                       WHEN 'boolean' THEN (s.attributes -> 'fallback_used')::boolean
                       WHEN 'number'  THEN (s.attributes -> 'fallback_used')::numeric <> 0
                       WHEN 'string'  THEN (s.attributes ->> 'fallback_used') <> ''
                       WHEN 'array'   THEN jsonb_array_length(s.attributes -> 'fallback_used') > 0
                       WHEN 'object'  THEN (s.attributes -> 'fallback_used') <> '{}'::jsonb
                       ELSE false END),
       %2$s * coalesce(sum(s.input_tokens), 0), %2$s * coalesce(sum(s.output_tokens), 0),
       %2$s * coalesce(sum(s.total_tokens), 0), %2$s * count(s.duration_ms),
       %2$s * coalesce(sum(s.duration_ms), 0), %2$s * coalesce(sum(s.cost_usd), 0),
       %2$s * count(*) FILTER (WHERE s.llm_model IS NOT NULL AND s.cost_usd IS NULL)
FROM %1$s AS s
CROSS JOIN (VALUES (0::smallint, 'minute', interval '1 minute'), (1::smallint, 'hour', interval '1 hour'),
                   (2::smallint, 'day', interval '1 day')) AS l (level, unit, width)
WHERE l.level = 0 OR date_trunc(l.unit, s.start_time, 'UTC') + l.width <= %3$L::timestamptz
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
    n_all = r.n_all + EXCLUDED.n_all, n_ok = r.n_ok + EXCLUDED.n_ok, n_error = r.n_error + EXCLUDED.n_error,
    n_timeout = r.n_timeout + EXCLUDED.n_timeout, n_started = r.n_started + EXCLUDED.n_started,
    n_fallback = r.n_fallback + EXCLUDED.n_fallback, tok_in = r.tok_in + EXCLUDED.tok_in,
    tok_out = r.tok_out + EXCLUDED.tok_out, tok_total = r.tok_total + EXCLUDED.tok_total,
    dur_n = r.dur_n + EXCLUDED.dur_n, dur_sum = r.dur_sum + EXCLUDED.dur_sum,
    cost_sum = r.cost_sum + EXCLUDED.cost_sum, n_unpriced = r.n_unpriced + EXCLUDED.n_unpriced
$q$, p_source, p_sign, coalesce(p_sealed, '-infinity'::timestamptz)),
    format($q$
WITH c AS (
    SELECT date_trunc('minute', s.start_time, 'UTC') AS bucket, s.agent_name, s.agent_tier,
           CASE WHEN s.duration_ms <= 0 THEN NULL
                ELSE ceil(ln(s.duration_ms) / 0.020000666706669435)::integer END AS idx,
           %2$s * count(*) AS n
    FROM %1$s AS s
    WHERE s.duration_ms IS NOT NULL
    GROUP BY 1, 2, 3, 4
)
INSERT INTO public.ml_span_rollup_sketch AS r (level, bucket, agent_name, agent_tier, idxs, ns, zeros)
SELECT 0, bucket, agent_name, agent_tier,
       coalesce(array_agg(idx) FILTER (WHERE idx IS NOT NULL), '{}'::integer[]),
       coalesce(array_agg(n::integer) FILTER (WHERE idx IS NOT NULL), '{}'::integer[]),
       coalesce(sum(n) FILTER (WHERE idx IS NULL), 0)
FROM c GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
    (idxs, ns) = (SELECT m.idxs, m.ns FROM public.obs_pairs_merge(r.idxs || EXCLUDED.idxs, r.ns || EXCLUDED.ns, false) AS m),
    zeros = r.zeros + EXCLUDED.zeros
$q$, p_source, p_sign)
];
$fn$;

-- The statements that correct the prefixes for the rows of p_source before the frontier (their
-- parameter $1; see the section's head): an insert (p_sign 1) at hour x adds its sketch to every
-- prefix after x up to the frontier (creating them from the '-infinity' row where the agent had
-- none yet); a delete (-1) adds what it removed to every prefix at or before x, '-infinity'
-- included. Text, executed by the trigger function itself: transition tables are visible only there.
CREATE OR REPLACE FUNCTION public.obs_rollup_prefix_statements(p_source text, p_sign integer)
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = public
AS $fn$
DECLARE
    late text := format($q$
        SELECT s.agent_name, s.agent_tier, date_trunc('hour', s.start_time, 'UTC') AS x,
               CASE WHEN s.duration_ms <= 0 THEN NULL
                    ELSE ceil(ln(s.duration_ms) / 0.020000666706669435)::integer END AS idx,
               count(*)::integer AS n
        FROM %1$s AS s WHERE s.duration_ms IS NOT NULL AND s.start_time < $1
        GROUP BY 1, 2, 3, 4$q$, p_source);
    materialize text := format($q$
        INSERT INTO public.ml_span_rollup_prefix AS p (boundary, agent_name, agent_tier, idxs, ns, zeros)
        SELECT b.b, k.agent_name, k.agent_tier, coalesce(z.idxs, '{}'::integer[]),
               coalesce(z.ns, '{}'::integer[]), coalesce(z.zeros, 0)
        FROM (SELECT d.agent_name, d.agent_tier, min(d.x) AS x0 FROM (%1$s) AS d GROUP BY 1, 2) AS k
        CROSS JOIN LATERAL (SELECT '-infinity'::timestamptz AS b
                            UNION ALL
                            SELECT g FROM generate_series(k.x0 + interval '1 hour', $1, interval '1 hour') AS g) AS b
        LEFT JOIN public.ml_span_rollup_prefix AS z
               ON z.boundary = '-infinity' AND z.agent_name = k.agent_name AND z.agent_tier = k.agent_tier
        ORDER BY 1, 2, 3
        ON CONFLICT (boundary, agent_name, agent_tier) DO NOTHING$q$, late);
    correct text := format($q$
        UPDATE public.ml_span_rollup_prefix AS p
        SET (idxs, ns) = (SELECT m.idxs, m.ns FROM public.obs_pairs_merge(p.idxs || u.idxs, p.ns || u.ns, false) AS m),
            zeros = p.zeros + u.zeros
        FROM (
            SELECT q.boundary, q.agent_name, q.agent_tier,
                   coalesce(array_agg(d.idx ORDER BY d.idx) FILTER (WHERE d.idx IS NOT NULL), '{}'::integer[]) AS idxs,
                   coalesce(array_agg(d.n ORDER BY d.idx) FILTER (WHERE d.idx IS NOT NULL), '{}'::integer[]) AS ns,
                   coalesce(sum(d.n) FILTER (WHERE d.idx IS NULL), 0) AS zeros
            FROM (%1$s) AS d
            JOIN public.ml_span_rollup_prefix AS q
              ON q.agent_name = d.agent_name AND q.agent_tier = d.agent_tier AND %2$s
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ) AS u
        WHERE p.boundary = u.boundary AND p.agent_name = u.agent_name AND p.agent_tier = u.agent_tier$q$,
        late, CASE WHEN p_sign > 0 THEN 'q.boundary > d.x AND q.boundary <= $1' ELSE 'q.boundary <= d.x' END);
BEGIN
    IF p_sign > 0 THEN
        RETURN ARRAY[materialize, correct];
    END IF;
    RETURN ARRAY[correct];
END
$fn$;

-- Builds what the frontier passes (see the section's head) up to the last whole hour that ended
-- 5 minutes before p_now; returns the frontier. Cheap when there is nothing to seal (one row
-- read); skipped inside a read-only transaction. SECURITY DEFINER: the readers that call it
-- (service_role through obs_rollup_metrics) have no write grant on the rollups.
CREATE OR REPLACE FUNCTION public.obs_rollup_seal(p_now timestamptz DEFAULT now())
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = public
SET timezone = 'UTC'
AS $fn$
DECLARE
    target timestamptz := date_trunc('hour', p_now - interval '5 minutes');
    f timestamptz;
    h timestamptz;
    late record;
BEGIN
    SELECT sealed_to INTO f FROM public.ml_span_rollup_state;
    IF (f IS NOT NULL AND f >= target) OR current_setting('transaction_read_only') = 'on' THEN
        RETURN f;
    END IF;
    PERFORM pg_advisory_xact_lock(7160016);
    SELECT sealed_to INTO f FROM public.ml_span_rollup_state;
    IF f IS NOT NULL AND f >= target THEN
        RETURN f;
    END IF;
    IF f IS NULL THEN
        SELECT least(date_trunc('hour', min(bucket)), target) INTO f FROM public.ml_span_rollups WHERE level = 0;
        f := coalesce(f, target);
    END IF;
    h := f;
    WHILE h < target LOOP
        INSERT INTO public.ml_span_rollups AS r (level, bucket, agent_name, agent_tier, n_all, n_ok, n_error,
            n_timeout, n_started, n_fallback, tok_in, tok_out, tok_total, dur_n, dur_sum, cost_sum, n_unpriced)
        SELECT 1, h, m.agent_name, m.agent_tier, sum(m.n_all), sum(m.n_ok), sum(m.n_error), sum(m.n_timeout),
               sum(m.n_started), sum(m.n_fallback), sum(m.tok_in), sum(m.tok_out), sum(m.tok_total),
               sum(m.dur_n), sum(m.dur_sum), sum(m.cost_sum), sum(m.n_unpriced)
        FROM public.ml_span_rollups AS m
        WHERE m.level = 0 AND m.bucket >= h AND m.bucket < h + interval '1 hour'
        GROUP BY m.agent_name, m.agent_tier ORDER BY 3, 4
        ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
            n_all = EXCLUDED.n_all, n_ok = EXCLUDED.n_ok, n_error = EXCLUDED.n_error,
            n_timeout = EXCLUDED.n_timeout, n_started = EXCLUDED.n_started, n_fallback = EXCLUDED.n_fallback,
            tok_in = EXCLUDED.tok_in, tok_out = EXCLUDED.tok_out, tok_total = EXCLUDED.tok_total,
            dur_n = EXCLUDED.dur_n, dur_sum = EXCLUDED.dur_sum, cost_sum = EXCLUDED.cost_sum,
            n_unpriced = EXCLUDED.n_unpriced;
        IF date_trunc('day', h + interval '1 hour') = h + interval '1 hour' THEN
            INSERT INTO public.ml_span_rollups AS r (level, bucket, agent_name, agent_tier, n_all, n_ok, n_error,
                n_timeout, n_started, n_fallback, tok_in, tok_out, tok_total, dur_n, dur_sum, cost_sum, n_unpriced)
            SELECT 2, date_trunc('day', h), m.agent_name, m.agent_tier, sum(m.n_all), sum(m.n_ok), sum(m.n_error),
                   sum(m.n_timeout), sum(m.n_started), sum(m.n_fallback), sum(m.tok_in), sum(m.tok_out),
                   sum(m.tok_total), sum(m.dur_n), sum(m.dur_sum), sum(m.cost_sum), sum(m.n_unpriced)
            FROM public.ml_span_rollups AS m
            WHERE m.level = 1 AND m.bucket >= date_trunc('day', h) AND m.bucket < h + interval '1 hour'
            GROUP BY m.agent_name, m.agent_tier ORDER BY 3, 4
            ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
                n_all = EXCLUDED.n_all, n_ok = EXCLUDED.n_ok, n_error = EXCLUDED.n_error,
                n_timeout = EXCLUDED.n_timeout, n_started = EXCLUDED.n_started, n_fallback = EXCLUDED.n_fallback,
                tok_in = EXCLUDED.tok_in, tok_out = EXCLUDED.tok_out, tok_total = EXCLUDED.tok_total,
                dur_n = EXCLUDED.dur_n, dur_sum = EXCLUDED.dur_sum, cost_sum = EXCLUDED.cost_sum,
                n_unpriced = EXCLUDED.n_unpriced;
        END IF;
        -- The prefix at h + 1 hour: the one at h (or the agent's '-infinity' row) plus hour h's
        -- minute sketches, summed per index.
        INSERT INTO public.ml_span_rollup_prefix AS p (boundary, agent_name, agent_tier, idxs, ns, zeros)
        SELECT DISTINCT k.boundary, k.agent_name, k.agent_tier, '{}'::integer[], '{}'::integer[], 0
        FROM (SELECT '-infinity'::timestamptz AS boundary, s.agent_name, s.agent_tier
              FROM public.ml_span_rollup_sketch AS s
              WHERE s.level = 0 AND s.bucket >= h AND s.bucket < h + interval '1 hour') AS k
        ORDER BY 1, 2, 3
        ON CONFLICT (boundary, agent_name, agent_tier) DO NOTHING;
        WITH base AS (
            SELECT DISTINCT ON (q.agent_name, q.agent_tier) q.agent_name, q.agent_tier, q.idxs, q.ns, q.zeros
            FROM public.ml_span_rollup_prefix AS q
            WHERE q.boundary = h OR q.boundary = '-infinity'
            ORDER BY q.agent_name, q.agent_tier, q.boundary DESC
        ), k AS (
            SELECT b.agent_name, b.agent_tier, b.idxs, b.ns, b.zeros FROM base AS b
            UNION ALL
            SELECT s.agent_name, s.agent_tier, s.idxs, s.ns, s.zeros
            FROM public.ml_span_rollup_sketch AS s
            WHERE s.level = 0 AND s.bucket >= h AND s.bucket < h + interval '1 hour'
        ), z AS (
            SELECT k.agent_name, k.agent_tier, sum(k.zeros) AS zeros FROM k GROUP BY 1, 2
        ), pairs AS (
            SELECT x.agent_name, x.agent_tier, array_agg(x.i ORDER BY x.i) AS idxs, array_agg(x.n ORDER BY x.i) AS ns
            FROM (SELECT k.agent_name, k.agent_tier, u.i, sum(u.n)::integer AS n
                  FROM k, unnest(k.idxs, k.ns) AS u (i, n)
                  GROUP BY 1, 2, 3 HAVING sum(u.n) <> 0) AS x
            GROUP BY 1, 2
        )
        INSERT INTO public.ml_span_rollup_prefix AS p (boundary, agent_name, agent_tier, idxs, ns, zeros)
        SELECT h + interval '1 hour', z.agent_name, z.agent_tier, coalesce(pairs.idxs, '{}'::integer[]),
               coalesce(pairs.ns, '{}'::integer[]), z.zeros
        FROM z LEFT JOIN pairs ON pairs.agent_name = z.agent_name AND pairs.agent_tier = z.agent_tier
        ORDER BY 1, 2, 3
        ON CONFLICT (boundary, agent_name, agent_tier) DO UPDATE SET
            idxs = EXCLUDED.idxs, ns = EXCLUDED.ns, zeros = EXCLUDED.zeros;
        h := h + interval '1 hour';
    END LOOP;
    -- Boundaries before the oldest stored span's hour all hold what the '-infinity' row holds
    -- (every window starting there covers every row): drop them, keeping the stored prefixes
    -- within the retention period.
    DELETE FROM public.ml_span_rollup_prefix
    WHERE boundary > '-infinity'
      AND boundary < coalesce((SELECT date_trunc('hour', min(s.start_time)) FROM public.ml_observability_spans AS s),
                              'infinity');
    -- Prefix counts only grow (a delete adds to the earlier prefixes instead of subtracting from
    -- the later ones): before an int4 count could overflow, take the agent's '-infinity' row
    -- away from every one of its prefixes (differences, all a reader uses, do not change).
    FOR late IN
        SELECT z.agent_name, z.agent_tier, z.idxs, z.ns, z.zeros
        FROM public.ml_span_rollup_prefix AS z
        WHERE z.boundary = '-infinity' AND EXISTS (
            SELECT 1 FROM public.ml_span_rollup_prefix AS q
            WHERE q.boundary = target AND q.agent_name = z.agent_name AND q.agent_tier = z.agent_tier
              AND (SELECT max(abs(x::bigint)) FROM unnest(q.ns) AS x) > 1073741824)
    LOOP
        UPDATE public.ml_span_rollup_prefix AS p
        SET (idxs, ns) = (SELECT m.idxs, m.ns FROM public.obs_pairs_merge(
                              p.idxs || late.idxs, p.ns || ARRAY(SELECT -x FROM unnest(late.ns) AS x), true) AS m),
            zeros = p.zeros - late.zeros
        WHERE p.agent_name = late.agent_name AND p.agent_tier = late.agent_tier;
    END LOOP;
    UPDATE public.ml_span_rollup_state SET sealed_to = target;
    RETURN target;
END
$fn$;

-- Concatenates integer arrays in input order (obs_rollup_metrics: a window's minute sketches).
CREATE OR REPLACE AGGREGATE public.obs_int_array_cat(integer[]) (
    SFUNC = array_cat, STYPE = integer[], INITCOND = '{}'
);

-- The insert trigger, on every write path's hot path (COPY, INSERT ... ON CONFLICT DO NOTHING,
-- PostgREST): static SQL, so plpgsql plans it once per session; each row is grouped once, into
-- its minute, and only the minute rows are written. Rows before the frontier (late spans,
-- replays of old batches) also go to the sealed rows (obs_rollup_statements /
-- obs_rollup_prefix_statements, dynamic: the rare path). Timezone UTC so the two-argument date_trunc
-- cuts UTC minutes (the three-argument form looks the zone up on every call).
CREATE OR REPLACE FUNCTION public.obs_rollup_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
SET timezone = 'UTC'
AS $fn$
DECLARE
    sealed timestamptz;
    statement text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7160016);
    SELECT sealed_to INTO sealed FROM public.ml_span_rollup_state;
    INSERT INTO public.ml_span_rollups AS r (level, bucket, agent_name, agent_tier, n_all, n_ok, n_error,
        n_timeout, n_started, n_fallback, tok_in, tok_out, tok_total, dur_n, dur_sum, cost_sum, n_unpriced)
    SELECT 0, date_trunc('minute', s.start_time), s.agent_name, s.agent_tier,
           count(*), count(*) FILTER (WHERE s.status = 'ok'),
           count(*) FILTER (WHERE s.status = 'error'),
           count(*) FILTER (WHERE s.status = 'timeout'),
           count(*) FILTER (WHERE s.status = 'started'),
           count(*) FILTER (WHERE CASE jsonb_typeof(s.attributes -> 'fallback_used')
                   WHEN 'boolean' THEN (s.attributes -> 'fallback_used')::boolean
                   WHEN 'number'  THEN (s.attributes -> 'fallback_used')::numeric <> 0
                   WHEN 'string'  THEN (s.attributes ->> 'fallback_used') <> ''
                   WHEN 'array'   THEN jsonb_array_length(s.attributes -> 'fallback_used') > 0
                   WHEN 'object'  THEN (s.attributes -> 'fallback_used') <> '{}'::jsonb
                   ELSE false END),
           coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0),
           coalesce(sum(s.total_tokens), 0), count(s.duration_ms),
           coalesce(sum(s.duration_ms), 0), coalesce(sum(s.cost_usd), 0),
           count(*) FILTER (WHERE s.llm_model IS NOT NULL AND s.cost_usd IS NULL)
    FROM new_rows AS s
    GROUP BY 2, 3, 4 ORDER BY 2, 3, 4
    ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
        n_all = r.n_all + EXCLUDED.n_all, n_ok = r.n_ok + EXCLUDED.n_ok, n_error = r.n_error + EXCLUDED.n_error,
        n_timeout = r.n_timeout + EXCLUDED.n_timeout, n_started = r.n_started + EXCLUDED.n_started,
        n_fallback = r.n_fallback + EXCLUDED.n_fallback, tok_in = r.tok_in + EXCLUDED.tok_in,
        tok_out = r.tok_out + EXCLUDED.tok_out, tok_total = r.tok_total + EXCLUDED.tok_total,
        dur_n = r.dur_n + EXCLUDED.dur_n, dur_sum = r.dur_sum + EXCLUDED.dur_sum,
        cost_sum = r.cost_sum + EXCLUDED.cost_sum, n_unpriced = r.n_unpriced + EXCLUDED.n_unpriced;

    WITH c AS (
        SELECT date_trunc('minute', s.start_time) AS bucket, s.agent_name, s.agent_tier,
               CASE WHEN s.duration_ms <= 0 THEN NULL
                    ELSE ceil(ln(s.duration_ms) / 0.020000666706669435)::integer END AS idx,
               count(*) AS n
        FROM new_rows AS s WHERE s.duration_ms IS NOT NULL
        GROUP BY 1, 2, 3, 4
    )
    INSERT INTO public.ml_span_rollup_sketch AS r (level, bucket, agent_name, agent_tier, idxs, ns, zeros)
    SELECT 0, c.bucket, c.agent_name, c.agent_tier,
           coalesce(array_agg(c.idx) FILTER (WHERE c.idx IS NOT NULL), '{}'::integer[]),
           coalesce(array_agg(c.n::integer) FILTER (WHERE c.idx IS NOT NULL), '{}'::integer[]),
           coalesce(sum(c.n) FILTER (WHERE c.idx IS NULL), 0)
    FROM c GROUP BY 2, 3, 4 ORDER BY 2, 3, 4
    ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET
        idxs = CASE WHEN cardinality(r.idxs) + cardinality(EXCLUDED.idxs) <= 2048 THEN r.idxs || EXCLUDED.idxs
                    ELSE (SELECT coalesce(array_agg(x.i ORDER BY x.i), '{}'::integer[]) FROM (
                              SELECT u.i FROM unnest(r.idxs || EXCLUDED.idxs, r.ns || EXCLUDED.ns) AS u (i, n)
                              GROUP BY u.i HAVING sum(u.n) <> 0) AS x) END,
        ns = CASE WHEN cardinality(r.idxs) + cardinality(EXCLUDED.idxs) <= 2048 THEN r.ns || EXCLUDED.ns
                  ELSE (SELECT coalesce(array_agg(x.s ORDER BY x.i), '{}'::integer[]) FROM (
                            SELECT u.i, sum(u.n)::integer AS s FROM unnest(r.idxs || EXCLUDED.idxs, r.ns || EXCLUDED.ns) AS u (i, n)
                            GROUP BY u.i HAVING sum(u.n) <> 0) AS x) END,
        zeros = r.zeros + EXCLUDED.zeros;

    IF sealed IS NOT NULL AND EXISTS (SELECT 1 FROM new_rows AS s WHERE s.start_time < sealed) THEN
        -- Late rows: the sealed hour and day figure rows (not the minutes, written above), then the prefixes.
        statement := (public.obs_rollup_statements(
            format('(SELECT * FROM new_rows WHERE start_time < %L::timestamptz)', sealed), 1, sealed))[1];
        EXECUTE replace(statement, 'WHERE l.level = 0 OR', 'WHERE l.level > 0 AND');
        FOREACH statement IN ARRAY public.obs_rollup_prefix_statements('new_rows', 1) LOOP
            EXECUTE statement USING sealed;
        END LOOP;
    END IF;
    RETURN NULL;
END
$fn$;

-- The trigger function of deletes, updates and truncates. SECURITY DEFINER: a writer
-- (service_role) needs no write grant on the rollup tables, only on the span table; RLS on the
-- rollups then guards reads alone.
CREATE OR REPLACE FUNCTION public.obs_rollup_apply()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $fn$
DECLARE
    statement text;
    sealed timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7160016);
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE public.ml_span_rollups, public.ml_span_rollup_sketch, public.ml_span_rollup_prefix;
        UPDATE public.ml_span_rollup_state SET sealed_to = NULL;
        RETURN NULL;
    END IF;
    SELECT sealed_to INTO sealed FROM public.ml_span_rollup_state;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        FOREACH statement IN ARRAY public.obs_rollup_statements('old_rows', -1, sealed) LOOP
            EXECUTE statement;
        END LOOP;
        IF sealed IS NOT NULL THEN
            FOREACH statement IN ARRAY public.obs_rollup_prefix_statements('old_rows', -1) LOOP
                EXECUTE statement USING sealed;
            END LOOP;
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        FOREACH statement IN ARRAY public.obs_rollup_statements('new_rows', 1, sealed) LOOP
            EXECUTE statement;
        END LOOP;
        IF sealed IS NOT NULL THEN
            FOREACH statement IN ARRAY public.obs_rollup_prefix_statements('new_rows', 1) LOOP
                EXECUTE statement USING sealed;
            END LOOP;
        END IF;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Buckets the delete emptied go; only the buckets it touched are looked at.
        DELETE FROM public.ml_span_rollups r
        USING (SELECT DISTINCT l.level, date_trunc(l.unit, o.start_time, 'UTC') AS bucket, o.agent_name, o.agent_tier
               FROM old_rows o
               CROSS JOIN (VALUES (0::smallint, 'minute'), (1::smallint, 'hour'), (2::smallint, 'day')) AS l (level, unit)) AS t
        WHERE r.level = t.level AND r.bucket = t.bucket AND r.agent_name = t.agent_name
          AND r.agent_tier = t.agent_tier AND r.n_all = 0;
        DELETE FROM public.ml_span_rollup_sketch k
        USING (SELECT DISTINCT date_trunc('minute', o.start_time, 'UTC') AS bucket, o.agent_name, o.agent_tier
               FROM old_rows o) AS t
        WHERE k.level = 0 AND k.bucket = t.bucket AND k.agent_name = t.agent_name
          AND k.agent_tier = t.agent_tier AND k.zeros = 0
          AND NOT EXISTS (SELECT 1 FROM unnest(k.idxs, k.ns) AS u (i, n) GROUP BY u.i HAVING sum(u.n) <> 0);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER ml_observability_spans_rollup_insert
    AFTER INSERT ON public.ml_observability_spans
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.obs_rollup_insert();
CREATE OR REPLACE TRIGGER ml_observability_spans_rollup_delete
    AFTER DELETE ON public.ml_observability_spans
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.obs_rollup_apply();
CREATE OR REPLACE TRIGGER ml_observability_spans_rollup_update
    AFTER UPDATE ON public.ml_observability_spans
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.obs_rollup_apply();
CREATE OR REPLACE TRIGGER ml_observability_spans_rollup_truncate
    AFTER TRUNCATE ON public.ml_observability_spans
    FOR EACH STATEMENT EXECUTE FUNCTION public.obs_rollup_apply();

-- obs_rollup_rebuild(p_from, p_to) -> integer: recompute every minute bucket of the UTC days
-- touching [p_from, p_to) from the raw rows, and drop what was sealed (the next
-- obs_rollup_seal builds it again from the minutes); returns the raw rows counted. Blocks
-- writers of the span table for the duration (SHARE lock) so no insert lands between reading
-- and replacing.
CREATE OR REPLACE FUNCTION public.obs_rollup_rebuild(p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public
AS $fn$
DECLARE
    lo timestamptz := date_trunc('day', p_from, 'UTC');
    hi timestamptz := date_trunc('day', p_to, 'UTC') + CASE WHEN date_trunc('day', p_to, 'UTC') < p_to
                                                            THEN interval '1 day' ELSE interval '0' END;
    statement text;
    counted bigint;
BEGIN
    LOCK TABLE public.ml_observability_spans IN SHARE MODE;
    PERFORM pg_advisory_xact_lock(7160016);
    DELETE FROM public.ml_span_rollups WHERE level > 0 OR (bucket >= lo AND bucket < hi);
    DELETE FROM public.ml_span_rollup_sketch WHERE level > 0 OR (bucket >= lo AND bucket < hi);
    DELETE FROM public.ml_span_rollup_prefix;
    UPDATE public.ml_span_rollup_state SET sealed_to = NULL;
    FOREACH statement IN ARRAY public.obs_rollup_statements(
        '(SELECT * FROM public.ml_observability_spans WHERE start_time >= $1 AND start_time < $2)', 1, NULL) LOOP
        EXECUTE statement USING lo, hi;
    END LOOP;
    SELECT count(*) INTO counted FROM public.ml_observability_spans WHERE start_time >= lo AND start_time < hi;
    RETURN counted;
END
$fn$;

-- Back-fill once, when the rollups are new (the triggers above already block writers until
-- this transaction commits, so no row is counted twice or missed), then seal.
DO $backfill$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.ml_span_rollups LIMIT 1)
       AND EXISTS (SELECT 1 FROM public.ml_observability_spans LIMIT 1) THEN
        PERFORM public.obs_rollup_rebuild(min(start_time), max(start_time) + interval '1 microsecond')
        FROM public.ml_observability_spans;
    END IF;
    PERFORM public.obs_rollup_seal();
END
$backfill$;

-- obs_rollup_metrics(p_since, p_agent) -> one row per (agent_name, agent_tier) with the summed
-- figures (idx, n, idxs and counts null), then sketch rows (figures null): idx 0 adds the
-- sketch, idx -1 subtracts it; n = zero durations, idxs / counts = array_send of the (index,
-- count) pair arrays (bytea, decoded by the client with numpy and summed there per index). The
-- window start_time >= p_since is cut at m, h, d (p_since rounded up to the minute, hour and
-- day) and at the frontier f (s2: its day): raw rows for [p_since, m); figures from minute rows
-- for [m, h) and [max(h, f), ∞), hour rows for [h, f) outside [d, s2), day rows for [d, s2);
-- sketches from the same minute rows plus prefix(f) - prefix(h) when h < f. So a window costs
-- two prefix arrays per agent plus at most ~2 hours of minute arrays, whatever its length. It
-- seals first (obs_rollup_seal), hence VOLATILE (PostgREST calls it with POST).
-- The bounds are plpgsql variables, so each call is planned with them as constants
-- (force_custom_plan) and every OR'ed range is one index range (a BitmapOr).
CREATE OR REPLACE FUNCTION public.obs_rollup_metrics(p_since timestamptz, p_agent text DEFAULT NULL)
RETURNS TABLE (
    agent_name text, agent_tier integer, idx integer, n bigint,
    n_all bigint, n_ok bigint, n_error bigint, n_timeout bigint, n_started bigint, n_fallback bigint,
    tok_in bigint, tok_out bigint, tok_total bigint, dur_n bigint, dur_sum double precision,
    idxs bytea, counts bytea, cost_sum double precision, n_unpriced bigint
)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    f timestamptz := coalesce(public.obs_rollup_seal(), '-infinity'::timestamptz);
    m timestamptz := date_trunc('minute', p_since, 'UTC');
    h timestamptz := date_trunc('hour', p_since, 'UTC');
    d timestamptz := date_trunc('day', p_since, 'UTC');
    s2 timestamptz;
    b timestamptz;
BEGIN
    m := m + CASE WHEN m < p_since THEN interval '1 minute' ELSE interval '0' END;
    h := greatest(m, h + CASE WHEN h < p_since THEN interval '1 hour' ELSE interval '0' END);
    d := greatest(h, d + CASE WHEN d < p_since THEN interval '1 day' ELSE interval '0' END);
    s2 := CASE WHEN isfinite(f) THEN date_trunc('day', f, 'UTC') ELSE f END;
    -- The prefix subtracted: prefix(h), or, when the window's first partial hour is sealed and
    -- fewer of its minutes lie before the window than in it, prefix(h - 1 hour) with the minute
    -- sketches [h - 1 hour, m) subtracted too: at most 30 minute sketches per agent instead of 59
    -- (a window starting at XX:01 read 58 of them, ~half of the answer's arrays).
    b := CASE WHEN m < h AND h <= f AND m - (h - interval '1 hour') < h - m THEN h - interval '1 hour' ELSE h END;
    RETURN QUERY
    WITH raw AS (
        SELECT s.agent_name, s.agent_tier, s.status, s.attributes, s.input_tokens, s.output_tokens,
               s.total_tokens, s.duration_ms, s.llm_model, s.cost_usd
        FROM public.ml_observability_spans s
        WHERE s.start_time >= p_since AND s.start_time < m AND (p_agent IS NULL OR s.agent_name = p_agent)
    ), totals AS (
        SELECT r.agent_name, r.agent_tier, r.n_all, r.n_ok, r.n_error, r.n_timeout, r.n_started, r.n_fallback,
               r.tok_in, r.tok_out, r.tok_total, r.dur_n, r.dur_sum, r.cost_sum, r.n_unpriced
        FROM public.ml_span_rollups r
        WHERE ((r.level = 0 AND r.bucket >= m AND r.bucket < h)
               OR (r.level = 0 AND r.bucket >= greatest(h, f))
               OR (r.level = 1 AND r.bucket >= h AND r.bucket < least(f, d))
               OR (r.level = 1 AND r.bucket >= greatest(d, s2) AND r.bucket < f)
               OR (r.level = 2 AND r.bucket >= d AND r.bucket < s2))
          AND (p_agent IS NULL OR r.agent_name = p_agent)
        UNION ALL
        SELECT s.agent_name, s.agent_tier, 1, (s.status = 'ok')::int, (s.status = 'error')::int,
               (s.status = 'timeout')::int, (s.status = 'started')::int,
               (CASE jsonb_typeof(s.attributes -> 'fallback_used')
                    WHEN 'boolean' THEN (s.attributes -> 'fallback_used')::boolean
                    WHEN 'number'  THEN (s.attributes -> 'fallback_used')::numeric <> 0
                    WHEN 'string'  THEN (s.attributes ->> 'fallback_used') <> ''
                    WHEN 'array'   THEN jsonb_array_length(s.attributes -> 'fallback_used') > 0
                    WHEN 'object'  THEN (s.attributes -> 'fallback_used') <> '{}'::jsonb
                    ELSE false END)::int,
               coalesce(s.input_tokens, 0), coalesce(s.output_tokens, 0), coalesce(s.total_tokens, 0),
               (s.duration_ms IS NOT NULL)::int, coalesce(s.duration_ms, 0), coalesce(s.cost_usd, 0),
               (s.llm_model IS NOT NULL AND s.cost_usd IS NULL)::int
        FROM raw s
    ), edge AS (
        SELECT s.agent_name, s.agent_tier,
               CASE WHEN s.duration_ms <= 0 THEN NULL
                    ELSE ceil(ln(s.duration_ms) / 0.020000666706669435)::integer END AS idx,
               count(*) AS n
        FROM raw s WHERE s.duration_ms IS NOT NULL GROUP BY 1, 2, 3
    ), mins AS (
        -- The minute sketches of the window (its first hour's edge and the unsealed hour),
        -- concatenated per (agent, tier) here (two aggregates over the same rows keep the pairs
        -- aligned): ~100 small arrays per agent cost more to ship and decode one by one, and more
        -- to sum per index in SQL (measured) than one array pair summed by the client. sgn -1:
        -- the minutes [b, m) before the window in its first hour, subtracted (empty when b = h).
        SELECT k.agent_name, k.agent_tier, CASE WHEN k.bucket < m THEN -1 ELSE 0 END AS sgn,
               k.idxs, k.ns, k.zeros
        FROM public.ml_span_rollup_sketch k
        WHERE k.level = 0
          AND ((k.bucket >= m AND k.bucket < h AND b = h) OR k.bucket >= greatest(h, f)
               OR (k.bucket >= b AND k.bucket < m))
          AND (p_agent IS NULL OR k.agent_name = p_agent)
    )
    SELECT t.agent_name, t.agent_tier, NULL::integer, NULL::bigint,
           sum(t.n_all)::bigint, sum(t.n_ok)::bigint, sum(t.n_error)::bigint, sum(t.n_timeout)::bigint,
           sum(t.n_started)::bigint, sum(t.n_fallback)::bigint, sum(t.tok_in)::bigint, sum(t.tok_out)::bigint,
           sum(t.tok_total)::bigint, sum(t.dur_n)::bigint, sum(t.dur_sum)::double precision, NULL::bytea, NULL::bytea,
           sum(t.cost_sum)::double precision, sum(t.n_unpriced)::bigint
    FROM totals t GROUP BY t.agent_name, t.agent_tier
    UNION ALL
    SELECT k.agent_name, k.agent_tier, k.sgn, CASE WHEN k.sgn < 0 THEN -sum(k.zeros) ELSE sum(k.zeros) END::bigint,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           array_send(public.obs_int_array_cat(k.idxs)), array_send(public.obs_int_array_cat(k.ns)), NULL, NULL
    FROM mins k GROUP BY k.agent_name, k.agent_tier, k.sgn
    UNION ALL
    SELECT k.agent_name, k.agent_tier, k.sgn, CASE WHEN k.sgn < 0 THEN -k.zeros ELSE k.zeros END,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, k.idxs_send, k.ns_send,
           NULL, NULL
    FROM (
        SELECT DISTINCT ON (q.agent_name, q.agent_tier, w.sgn) q.agent_name, q.agent_tier, w.sgn, q.idxs_send,
               q.ns_send, q.zeros
        FROM (VALUES (0, f), (-1, b)) AS w (sgn, at)
        JOIN public.ml_span_rollup_prefix q ON q.boundary = w.at OR q.boundary = '-infinity'
        WHERE b < f AND (p_agent IS NULL OR q.agent_name = p_agent)
        ORDER BY q.agent_name, q.agent_tier, w.sgn, q.boundary DESC
    ) AS k
    UNION ALL
    -- The raw edge's (index, count) pairs, one row per (agent, tier) (the two aggregates run over
    -- the same rows in the same order, so the arrays stay aligned): a busy minute at the edge
    -- holds thousands of pairs, each a row to ship and decode when sent one by one.
    SELECT e.agent_name, e.agent_tier, 0, coalesce(sum(e.n) FILTER (WHERE e.idx IS NULL), 0)::bigint,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           array_send(coalesce(array_agg(e.idx) FILTER (WHERE e.idx IS NOT NULL), '{}'::integer[])),
           array_send(coalesce(array_agg(e.n::integer) FILTER (WHERE e.idx IS NOT NULL), '{}'::integer[])),
           NULL, NULL
    FROM edge e GROUP BY e.agent_name, e.agent_tier;
END
$fn$;

COMMENT ON FUNCTION public.obs_rollup_metrics(timestamptz, text) IS
    'Window start_time >= p_since (optionally one agent) from rollups: per (agent, tier) the summed figures '
    '(idx null), then latency sketches (idx 0 added, -1 subtracted; n = zero durations, idxs/counts = '
    'array_send of index/count pairs; 1 %).';

ALTER TABLE public.ml_span_rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.ml_span_rollup_sketch ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.ml_span_rollup_prefix ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.ml_span_rollup_state ENABLE ROW LEVEL SECURITY;

-- --------------------------------------------------------------------------- lock-down

ALTER TABLE public.ml_observability_spans ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON TABLE public.ml_observability_spans FROM PUBLIC;
REVOKE ALL ON TABLE public.v_agent_latency_summary FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_latency_stats(timestamptz, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_status_distribution(timestamptz, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_quality_counts(timestamptz, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_delete_old_spans(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON TABLE public.ml_span_rollups FROM PUBLIC;
REVOKE ALL ON TABLE public.ml_span_rollup_sketch FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_metrics(timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_rebuild(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_apply() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_int_array_cat(integer[]) FROM PUBLIC;
REVOKE ALL ON TABLE public.ml_span_rollup_prefix FROM PUBLIC;
REVOKE ALL ON TABLE public.ml_span_rollup_state FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_seal(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_statements(text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_rollup_prefix_statements(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_pairs_merge(integer[], integer[], boolean) FROM PUBLIC;

DO $roles$
DECLARE
    api_role text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON TABLE public.ml_observability_spans FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON TABLE public.v_agent_latency_summary FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_latency_stats(timestamptz, text, text, text) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_status_distribution(timestamptz, text, text) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_quality_counts(timestamptz, text, text) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_delete_old_spans(timestamptz, integer) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON TABLE public.ml_span_rollups FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON TABLE public.ml_span_rollup_sketch FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_rollup_metrics(timestamptz, text) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_rollup_rebuild(timestamptz, timestamptz) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON TABLE public.ml_span_rollup_prefix FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON TABLE public.ml_span_rollup_state FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_rollup_seal(timestamptz) FROM %I', api_role);
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.ml_observability_spans TO service_role;
        GRANT SELECT ON TABLE public.v_agent_latency_summary TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_latency_stats(timestamptz, text, text, text) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_status_distribution(timestamptz, text, text) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_quality_counts(timestamptz, text, text) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_delete_old_spans(timestamptz, integer) TO service_role;
        -- Rollups: read-only for the API role (the triggers write them as the schema's owner).
        GRANT SELECT ON TABLE public.ml_span_rollups, public.ml_span_rollup_sketch TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_rollup_metrics(timestamptz, text) TO service_role;
        -- obs_rollup_metrics seals first (SECURITY DEFINER) and reads the prefixes.
        GRANT EXECUTE ON FUNCTION public.obs_rollup_seal(timestamptz) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_int_array_cat(integer[]) TO service_role;
        GRANT SELECT ON TABLE public.ml_span_rollup_prefix TO service_role;
        IF NOT EXISTS (
            SELECT 1 FROM pg_policies
            WHERE schemaname = 'public' AND tablename = 'ml_span_rollup_prefix'
              AND policyname = 'ml_span_rollup_prefix_service_role_read'
        ) THEN
            CREATE POLICY ml_span_rollup_prefix_service_role_read ON public.ml_span_rollup_prefix
                AS PERMISSIVE FOR SELECT TO service_role USING (true);
        END IF;
        IF NOT EXISTS (
            SELECT 1 FROM pg_policies
            WHERE schemaname = 'public' AND tablename = 'ml_span_rollups'
              AND policyname = 'ml_span_rollups_service_role_read'
        ) THEN
            CREATE POLICY ml_span_rollups_service_role_read ON public.ml_span_rollups
                AS PERMISSIVE FOR SELECT TO service_role USING (true);
            CREATE POLICY ml_span_rollup_sketch_service_role_read ON public.ml_span_rollup_sketch
                AS PERMISSIVE FOR SELECT TO service_role USING (true);
        END IF;
        -- service_role has BYPASSRLS on Supabase; the policy keeps it working where it does not.
        IF NOT EXISTS (
            SELECT 1 FROM pg_policies
            WHERE schemaname = 'public' AND tablename = 'ml_observability_spans'
              AND policyname = 'ml_observability_spans_service_role_all'
        ) THEN
            CREATE POLICY ml_observability_spans_service_role_all ON public.ml_observability_spans
                AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
        END IF;
    END IF;
END
$roles$;

-- --------------------------------------------------------------------------- feedback
-- ml_observability_feedback: one row per feedback score (log_feedback on the agent or the Opik
-- facade), on a whole trace (span_id null) or on one span. Its own table, not span attributes:
-- a score arrives after its trace was stored, perhaps from another process, and is a history
-- (every score kept; Opik keeps the latest per target and name). Same lock-down as the spans:
-- RLS with one policy for service_role, nothing for anon / authenticated / PUBLIC.
CREATE TABLE IF NOT EXISTS public.ml_observability_feedback (
    feedback_id     text             NOT NULL CHECK (length(feedback_id) > 0),
    trace_id        text             NOT NULL CHECK (length(trace_id) > 0),
    span_id         text,
    name            text             NOT NULL CHECK (length(name) > 0),
    -- Postgres orders NaN above every number and calls it equal to itself: refused explicitly.
    value           double precision NOT NULL
                    CHECK (value <> 'NaN'::float8 AND value > '-Infinity'::float8 AND value < 'Infinity'::float8),
    reason          text,
    category_name   text,
    source          text             NOT NULL DEFAULT 'sdk',
    created_at      timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT ml_observability_feedback_pkey PRIMARY KEY (feedback_id)
);

COMMENT ON TABLE public.ml_observability_feedback IS
    'Feedback scores on traces / spans of ml_observability_spans (observability connector). RLS: service_role only.';

-- created_at: metrics windows; (trace_id, span_id): a trace's scores, and the join to its spans.
CREATE INDEX IF NOT EXISTS idx_ml_observability_feedback_created
    ON public.ml_observability_feedback (created_at);
CREATE INDEX IF NOT EXISTS idx_ml_observability_feedback_trace
    ON public.ml_observability_feedback (trace_id, span_id);

-- obs_insert_feedback(p_rows jsonb) -> integer: inserts an array of feedback rows (the columns by
-- name; created_at ISO text), skipping ids already stored; returns how many were new. The Supabase
-- REST backend's write (one RPC, one transaction), and the Postgres backend's too.
CREATE OR REPLACE FUNCTION public.obs_insert_feedback(p_rows jsonb)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY INVOKER
SET search_path = public
AS $fn$
    WITH added AS (
        INSERT INTO public.ml_observability_feedback
            (feedback_id, trace_id, span_id, name, value, reason, category_name, source, created_at)
        SELECT r.feedback_id, r.trace_id, r.span_id, r.name, r.value, r.reason, r.category_name,
               coalesce(r.source, 'sdk'), coalesce(r.created_at, now())
        FROM jsonb_to_recordset(p_rows) AS r(
            feedback_id text, trace_id text, span_id text, name text, value double precision,
            reason text, category_name text, source text, created_at timestamptz)
        ON CONFLICT (feedback_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM added
$fn$;

-- obs_feedback_by_agent(p_since, p_agent, p_trace) -> (agent_name, name, avg_value, n), one row per
-- (agent, score name) of the scores created since p_since. A span's score belongs to that span's
-- agent; a trace's score to its root span's agent (no parent, else the earliest span); a score
-- whose span is not stored (yet) to 'unknown'. The same rule as the SQLite backend.
CREATE OR REPLACE FUNCTION public.obs_feedback_by_agent(p_since timestamptz, p_agent text, p_trace text)
RETURNS TABLE (agent_name text, name text, avg_value double precision, n bigint)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = public
AS $fn$
    SELECT a.agent_name, a.name, avg(a.value), count(*)
    FROM (
        SELECT coalesce((
                   SELECT s.agent_name FROM public.ml_observability_spans s
                   WHERE s.trace_id = f.trace_id
                     AND (f.span_id IS NULL OR s.span_id = f.span_id)
                   ORDER BY (s.parent_span_id IS NULL) DESC, s.start_time
                   LIMIT 1
               ), 'unknown') AS agent_name,
               f.name, f.value
        FROM public.ml_observability_feedback f
        WHERE f.created_at >= p_since AND (p_trace IS NULL OR f.trace_id = p_trace)
    ) a
    WHERE p_agent IS NULL OR a.agent_name = p_agent
    GROUP BY a.agent_name, a.name
    ORDER BY a.agent_name, a.name
$fn$;

-- obs_delete_old_feedback(p_cutoff) -> integer: deletes the scores created before p_cutoff (retention,
-- run by `obs-connector cleanup` with the spans) and returns how many went.
CREATE OR REPLACE FUNCTION public.obs_delete_old_feedback(p_cutoff timestamptz)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY INVOKER
SET search_path = public
AS $fn$
    WITH gone AS (
        DELETE FROM public.ml_observability_feedback WHERE created_at < p_cutoff RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$fn$;

ALTER TABLE public.ml_observability_feedback ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE public.ml_observability_feedback FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_delete_old_feedback(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_insert_feedback(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.obs_feedback_by_agent(timestamptz, text, text) FROM PUBLIC;

DO $feedback_roles$
DECLARE
    api_role text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON TABLE public.ml_observability_feedback FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_insert_feedback(jsonb) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_feedback_by_agent(timestamptz, text, text) FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON FUNCTION public.obs_delete_old_feedback(timestamptz) FROM %I', api_role);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.ml_observability_feedback TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_insert_feedback(jsonb) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_feedback_by_agent(timestamptz, text, text) TO service_role;
        GRANT EXECUTE ON FUNCTION public.obs_delete_old_feedback(timestamptz) TO service_role;
        IF NOT EXISTS (
            SELECT 1 FROM pg_policies
            WHERE schemaname = 'public' AND tablename = 'ml_observability_feedback'
              AND policyname = 'ml_observability_feedback_service_role_all'
        ) THEN
            CREATE POLICY ml_observability_feedback_service_role_all ON public.ml_observability_feedback
                AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
        END IF;
    END IF;
END
$feedback_roles$;

COMMIT;

-- Supabase: make PostgREST see new / changed functions now (no listener on a plain Postgres).
NOTIFY pgrst, 'reload schema';
