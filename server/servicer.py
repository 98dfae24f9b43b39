"""``PolicyOptimizer``: runs, prompts, reward endpoints, methods and adapters over RunStore/WorkQueue.

The tenant comes from ``interceptors.current_tenant()``; a run of another tenant is NOT_FOUND.
Errors are raised as ``policyopt.core.errors`` and mapped to statuses by the error interceptor.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import grpc
import redis

from policyopt.core import identifiers
from policyopt.core.errors import FailedPrecondition, InvalidArgument, PolicyOptError, ResourceExhausted
from policyopt.core.identifiers import quote
from policyopt.core.outbound import OutboundPolicy, parse_base_url
from policyopt.core.settings import Settings
from policyopt.core.telemetry import inject_context
from policyopt.core.types import PromptTask, RewardEndpointInfo, Run, RunConfig, RunStatus
from policyopt.models import ModelCatalog
from policyopt.server import convert, convert_eval, episodes, evaluation, methods, streams, warm_start
from policyopt.server.bounds import (
    validate_evaluation,
    validate_method_counts,
    validate_reward_timeout,
    validate_run_config,
)
from policyopt.server.interceptors import current_tenant
from policyopt.server.lora_targets import LoraTargetChecker
from policyopt.server.validation import PromptLengthChecker, validate_teacher, validate_trajectory_groups
from policyopt.state import AdapterStore, LocalAdapterStore, RunStore, WorkQueue
from policyopt.state.episodes import EpisodeStore
from policyopt.state.evals import EvalStore
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc


class PolicyOptimizerServicer(pb_grpc.PolicyOptimizerServicer):
    def __init__(self, settings: Settings, r: redis.Redis, poll_ms: int = 1000) -> None:
        self.settings = settings
        self.store = RunStore(r)
        self.queue = WorkQueue(
            r, claim_idle_ms=settings.claim_idle_ms, max_queued_prompts=settings.max_queued_prompts
        )
        self.adapters: AdapterStore = LocalAdapterStore(settings.adapter_root)
        self.lengths = PromptLengthChecker(ModelCatalog.from_settings(settings))
        self.lora_targets = LoraTargetChecker(self.lengths.model_dir)
        self._creating = threading.Lock()  # active-run count and creation, one CreateRun at a time
        self.outbound = OutboundPolicy.from_settings(settings)  # a bad allowlist fails at startup
        self.poll_ms = poll_ms
        self.evals = EvalStore(r)
        self.uploads_root = Path(settings.data_dir) / "uploads"

    def _run(self, run_id: str) -> Run:
        """The caller's run; a malformed id is NOT_FOUND like an unknown one (see ``core.identifiers``)."""
        return self.store.get_run(identifiers.run_id(run_id), current_tenant())

    # -- reward endpoints ------------------------------------------------------------------------
    def RegisterRewardEndpoint(
        self, request: pb.RegisterRewardEndpointRequest, context: grpc.ServicerContext
    ) -> pb.RewardEndpoint:
        identifiers.endpoint_name(request.name)
        validate_reward_timeout(request.timeout_s, self.settings)
        self.outbound.check_address(request.address, f"reward endpoint {quote(request.name)}")
        endpoint = RewardEndpointInfo(
            name=request.name,
            address=request.address,
            timeout_s=request.timeout_s or self.settings.reward_timeout_s,
            tls=request.tls,
            tls_ca=convert.endpoint_ca_from_request(request),
        )
        return convert.endpoint_to_proto(self.store.register_endpoint(current_tenant(), endpoint))

    def ListRewardEndpoints(
        self, request: pb.ListRewardEndpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListRewardEndpointsResponse:
        endpoints = self.store.list_endpoints(current_tenant())
        return pb.ListRewardEndpointsResponse(endpoints=[convert.endpoint_to_proto(e) for e in endpoints])

    # -- runs ----------------------------------------------------------------------------------------
    def CreateRun(self, request: pb.CreateRunRequest, context: grpc.ServicerContext) -> pb.Run:
        config = convert.run_config_from_request(request)
        validate_run_config(config, self.settings)
        spec = methods.resolve(config.method)  # once: the run keeps the resolved method, pinned
        validate_method_counts(methods.counts(spec), config.group_size * config.prompts_per_step)
        validate_teacher(config, spec.needs, self._vocab_size)
        folded = convert.fold_teacher_coef(config)  # the coef also shows in the overrides as asked
        if folded is not config:
            spec = methods.with_teacher_coef(spec, config.teacher.coef)
        config = replace(folded, resolved_method=methods.pin(spec))
        self._check_outbound(config)  # the reward endpoint must exist, and both endpoints be allowed
        self.lengths.check_completion(config)  # the model must resolve, its tokenizer load, the run fit
        self.lora_targets.check(config.base_model, config.lora_target_modules)
        eval_prompts = convert_eval.eval_prompts_from_proto(request.eval.prompts, "eval.prompts")
        validate_evaluation(config, len(eval_prompts), self.settings)
        evaluation.check_eval_prompts(eval_prompts, config, self.lengths.check)
        source = self._init_source(config)
        with self._creating:
            self._check_active_runs(current_tenant())
            run_id = self.store.new_run_id()
            version_zero = (
                warm_start.publish_version_zero(run_id, config, source, self.adapters) if source else None
            )  # the files first: the run, its version 0, eval prompts and baseline eval are one MULTI
            run = self.store.create_run(
                current_tenant(), config, run_id=run_id, version_zero=version_zero, eval_prompts=eval_prompts
            )
        return self._run_proto(run)

    def _init_source(self, config: RunConfig) -> warm_start.InitSource | None:
        """``init_adapter``'s files, checked against the new run's base model and LoRA; None when unset."""
        if not config.init_adapter:
            return None
        source = warm_start.resolve_init_adapter(
            config.init_adapter, current_tenant(), self.uploads_root, self.store, self.adapters
        )
        warm_start.check_fits(source, config, self._same_model)
        return source

    def _same_model(self, mine: str, theirs: str) -> bool:
        if mine == theirs:
            return True
        try:
            return self.lengths.model_dir(mine) == self.lengths.model_dir(theirs)
        except PolicyOptError:  # a model this server cannot name is not the run's
            return False

    def _run_protos(self, runs: list[Run]) -> list[pb.Run]:
        """The runs with their eval prompt counts and newest promoted versions (one Redis round trip)."""
        messages = [convert.run_to_proto(run) for run in runs]
        for message, (count, promoted) in zip(
            messages, self.evals.summaries([run.run_id for run in runs]), strict=True
        ):
            message.eval_prompt_count, message.promoted_version = count, promoted
        return messages

    def _run_proto(self, run: Run) -> pb.Run:
        return self._run_protos([run])[0]

    def _check_active_runs(self, tenant: str) -> None:
        running = len(self.store.running_run_ids(tenant))
        if running >= self.settings.max_active_runs_per_tenant:
            raise ResourceExhausted(
                f"you have {running} running runs, the limit per tenant (the server's "
                "POLICYOPT_MAX_ACTIVE_RUNS_PER_TENANT); cancel a run you no longer need (CancelRun) or wait "
                "for one to finish"
            )

    def _check_outbound(self, config: RunConfig) -> None:
        """The run's endpoints against the outbound policy as it is now (it may have changed since)."""
        if config.reward_endpoint:
            endpoint = self.store.get_endpoint(current_tenant(), config.reward_endpoint)
            self.outbound.check_address(endpoint.address, f"reward endpoint {quote(endpoint.name)}")
        if config.teacher.endpoint:
            _, host, port = parse_base_url(config.teacher.endpoint)
            self.outbound.check(host, port, "teacher.endpoint")
        if config.eval.reward_endpoint:
            endpoint = self.store.get_endpoint(current_tenant(), config.eval.reward_endpoint)
            self.outbound.check_address(endpoint.address, f"eval.reward_endpoint {quote(endpoint.name)}")

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self._run_proto(self._run(request.run_id))

    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        runs = self.store.list_runs(current_tenant())
        return pb.ListRunsResponse(runs=self._run_protos(runs))

    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.Run:
        self._run(request.run_id)
        return self._run_proto(self.store.set_status(request.run_id, RunStatus.CANCELLED))

    def WatchRun(self, request: pb.WatchRunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        self._run(request.run_id)
        for event in streams.run_events(
            self.store,
            request.run_id,
            identifiers.event_id(request.after_event_id),
            context.is_active,
            self.poll_ms,
        ):
            yield convert.event_to_proto(event)

    # -- prompts ---------------------------------------------------------------------------------------
    def SubmitPrompts(
        self, request: pb.SubmitPromptsRequest, context: grpc.ServicerContext
    ) -> pb.SubmitPromptsResponse:
        run = self._run(request.run_id)
        prompts = convert.prompts_from_request(request)
        self._check_accepts_prompts(run, [text for text, _ in prompts])
        trace = inject_context()
        tasks = [
            PromptTask(
                run_id=run.run_id,
                prompt_id=f"p-{uuid.uuid4().hex[:12]}",
                prompt=text,
                metadata=meta,
                trace=trace,
            )
            for text, meta in prompts
        ]
        self.queue.enqueue_prompts(tasks)
        return pb.SubmitPromptsResponse(prompt_ids=[t.prompt_id for t in tasks])

    def _check_accepts_prompts(self, run: Run, texts: list[str]) -> None:
        """Cheap checks first (state, counts, queue limits), tokenizing last."""
        if run.status != RunStatus.RUNNING:
            raise FailedPrecondition(
                f"run {run.run_id} is {run.status.value} and takes no more prompts; create a new run"
            )
        if not texts:
            raise InvalidArgument("no prompts: SubmitPrompts needs at least one prompt with non-empty text")
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise InvalidArgument(f"prompts {quote(empty, 200)} have empty text; every prompt needs text")
        self._check_prompt_queues(run, len(texts))
        if run.config.reward_endpoint:
            self.store.get_endpoint(run.tenant, run.config.reward_endpoint)
        elif methods.of_run(run.config).uses_task_reward:
            raise FailedPrecondition(
                f"run {run.run_id} has no reward endpoint, so prompts cannot be scored; "
                "create the run with reward_endpoint, or send scored trajectories with SubmitTrajectories"
            )
        self.lengths.check(run.config, texts)

    def _check_prompt_queues(self, run: Run, count: int) -> None:
        """The run's queue (``max_queued_prompts``) and the tenant's (``max_queued_prompts_per_tenant``)."""
        queued = self.queue.queued_prompts(run.run_id)
        if queued + count > self.settings.max_queued_prompts:
            raise ResourceExhausted(
                f"run {run.run_id} has {queued} prompts waiting and {count} more would pass its limit of "
                f"{self.settings.max_queued_prompts} (the server's POLICYOPT_MAX_QUEUED_PROMPTS); wait for "
                "rollouts to drain (watch the run) or send fewer at once"
            )
        limit = self.settings.max_queued_prompts_per_tenant
        waiting = sum(self.queue.queued_prompts(i) for i in self.store.running_run_ids(run.tenant))
        if waiting + count > limit:
            raise ResourceExhausted(
                f"your running runs have {waiting} prompts waiting in all and {count} more would pass the "
                f"limit per tenant of {limit} (the server's POLICYOPT_MAX_QUEUED_PROMPTS_PER_TENANT); wait "
                "for rollouts to drain, or cancel runs whose prompts you no longer need"
            )

    def _vocab_size(self, model: str) -> int:
        try:
            return self.lengths.vocab_size(model)
        except InvalidArgument as exc:
            raise InvalidArgument(f"teacher.model {model!r} cannot be read: {exc}") from exc

    def SubmitTrajectories(
        self, request: pb.SubmitTrajectoriesRequest, context: grpc.ServicerContext
    ) -> pb.SubmitTrajectoriesResponse:
        """Client-driven (agentic) groups, validated and queued straight to the run's trainer."""
        run = self._run(request.run_id)
        if run.status != RunStatus.RUNNING:
            raise FailedPrecondition(
                f"run {run.run_id} is {run.status.value} and takes no more trajectories; create a new run"
            )
        inputs = convert.trajectory_groups_from_request(request)
        self._check_group_counts(run, [len(group.trajectories) for group in inputs])
        validate_trajectory_groups(inputs, run, self.lengths.limits(run.config.base_model))
        trace = inject_context()
        groups = [
            convert.trajectory_group_from_input(run.run_id, f"g-{uuid.uuid4().hex[:12]}", group, trace)
            for group in inputs
        ]
        self.queue.enqueue_groups(run.run_id, groups)
        return pb.SubmitTrajectoriesResponse(group_ids=[g.group_id for g in groups])

    def FinishEpisode(
        self, request: pb.FinishEpisodeRequest, context: grpc.ServicerContext
    ) -> pb.FinishEpisodeResponse:
        """A session recorded by ``policyopt proxy`` becomes an episode of its task key (``server/episodes.py``)."""
        run = self._run(request.run_id)
        outcome = episodes.finish_episode(
            EpisodeStore(self.store.r, self.settings.episode_ttl_s),
            self.queue,
            run,
            episodes.EpisodeRequest(
                request.session_id, request.reward, request.task_key, dict(request.components)
            ),
            self.lengths.limits(run.config.base_model),
            self.settings.max_queued_prompts,
        )
        return pb.FinishEpisodeResponse(**asdict(outcome))

    def _check_group_counts(self, run: Run, sizes: list[int]) -> None:
        """Group sizes and the run's queue of groups, before any trajectory is looked at."""
        largest = max(sizes, default=0)
        if largest > self.settings.max_group_size:
            raise InvalidArgument(
                f"group {sizes.index(largest)} has {largest} trajectories; a group holds at most "
                f"{self.settings.max_group_size} (the server's POLICYOPT_MAX_GROUP_SIZE)"
            )
        queued = self.queue.queued_groups(run.run_id)
        if queued + len(sizes) > self.settings.max_queued_prompts:
            raise ResourceExhausted(
                f"run {run.run_id} has {queued} groups waiting for its trainer and {len(sizes)} more would "
                f"pass the limit of {self.settings.max_queued_prompts} (the server's "
                "POLICYOPT_MAX_QUEUED_PROMPTS); wait for steps to drain them (watch the run)"
            )

    # -- adapters --------------------------------------------------------------------------------------
    def ListAdapters(
        self, request: pb.ListAdaptersRequest, context: grpc.ServicerContext
    ) -> pb.ListAdaptersResponse:
        self._run(request.run_id)
        versions = self.store.list_versions(request.run_id)
        if request.promoted_only:
            versions = [m for m in versions if m.promoted]
        return pb.ListAdaptersResponse(versions=[convert.manifest_to_proto(m) for m in versions])

    def PullAdapter(
        self, request: pb.PullAdapterRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AdapterChunk]:
        self._run(request.run_id)
        manifest = self.store.get_version(request.run_id, identifiers.version(request.version))
        directory = self.adapters.open_version(manifest.run_id, manifest.version)
        first: pb.AdapterVersion | None = convert.manifest_to_proto(manifest)
        for name, data, last, sha256 in streams.file_chunks(directory, manifest):
            yield pb.AdapterChunk(manifest=first, file_name=name, data=data, last=last, sha256=sha256)
            first = None
        if first is not None:  # a manifest without files still sends the manifest
            yield pb.AdapterChunk(manifest=first)

    def WatchAdapters(
        self, request: pb.WatchAdaptersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AdapterVersion]:
        self._run(request.run_id)
        if request.promoted_only:
            versions = streams.promoted_versions(
                self.evals, self.store, request.run_id, request.after_version, context.is_active, self.poll_ms
            )
        else:
            versions = streams.new_versions(
                self.store, request.run_id, request.after_version, context.is_active, self.poll_ms
            )
        for manifest in versions:
            yield convert.manifest_to_proto(manifest)

    # -- evaluation and warm starts ------------------------------------------------------------------------
    def AddEvalPrompts(
        self, request: pb.AddEvalPromptsRequest, context: grpc.ServicerContext
    ) -> pb.AddEvalPromptsResponse:
        run = self._run(request.run_id)
        evaluation.check_accepts_eval_prompts(run, len(request.prompts))
        prompts = convert_eval.eval_prompts_from_proto(request.prompts, "prompts")
        evaluation.check_eval_prompts(prompts, run.config, self.lengths.check)
        count = self.evals.add_prompts(
            run.run_id, prompts, self.settings.max_eval_prompts, evaluation.wants_baseline(self.evals, run)
        )
        return pb.AddEvalPromptsResponse(eval_prompt_count=count)

    def UploadAdapter(
        self, request_iterator: Iterator[pb.UploadAdapterChunk], context: grpc.ServicerContext
    ) -> pb.UploadedAdapter:
        chunks = (
            warm_start.UploadChunk(c.base_model, c.file_name, c.data, c.last, c.sha256)
            for c in request_iterator
        )
        upload_id, shape = warm_start.receive_upload(
            chunks, self.uploads_root, current_tenant(), self.settings.max_upload_mb << 20
        )
        return pb.UploadedAdapter(
            upload_id=upload_id,
            base_model=shape.base_model,
            rank=shape.rank,
            target_modules=list(shape.target_modules),
            files=shape.files,
            alpha=round(shape.alpha),
        )

    # -- methods ---------------------------------------------------------------------------------------
    def ListMethods(
        self, request: pb.ListMethodsRequest, context: grpc.ServicerContext
    ) -> pb.ListMethodsResponse:
        return convert.methods_to_proto(methods.catalog())
