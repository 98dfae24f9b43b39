from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_STEP: _ClassVar[EventKind]
    EVENT_KIND_VERSION: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]
    EVENT_KIND_WARNING: _ClassVar[EventKind]
    EVENT_KIND_STATUS: _ClassVar[EventKind]
    EVENT_KIND_EVAL: _ClassVar[EventKind]
    EVENT_KIND_SAMPLE: _ClassVar[EventKind]
    EVENT_KIND_PROMOTION: _ClassVar[EventKind]

class TurnRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_ROLE_UNSPECIFIED: _ClassVar[TurnRole]
    TURN_ROLE_MODEL: _ClassVar[TurnRole]
    TURN_ROLE_ENVIRONMENT: _ClassVar[TurnRole]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_STEP: EventKind
EVENT_KIND_VERSION: EventKind
EVENT_KIND_ERROR: EventKind
EVENT_KIND_WARNING: EventKind
EVENT_KIND_STATUS: EventKind
EVENT_KIND_EVAL: EventKind
EVENT_KIND_SAMPLE: EventKind
EVENT_KIND_PROMOTION: EventKind
TURN_ROLE_UNSPECIFIED: TurnRole
TURN_ROLE_MODEL: TurnRole
TURN_ROLE_ENVIRONMENT: TurnRole

class RegisterRewardEndpointRequest(_message.Message):
    __slots__ = ("name", "address", "timeout_s", "tls", "tls_ca")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    timeout_s: float
    tls: bool
    tls_ca: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., timeout_s: _Optional[float] = ..., tls: _Optional[bool] = ..., tls_ca: _Optional[str] = ...) -> None: ...

class RewardEndpoint(_message.Message):
    __slots__ = ("name", "address", "timeout_s", "tls", "tls_ca")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    timeout_s: float
    tls: bool
    tls_ca: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., timeout_s: _Optional[float] = ..., tls: _Optional[bool] = ..., tls_ca: _Optional[str] = ...) -> None: ...

class ListRewardEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRewardEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[RewardEndpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[RewardEndpoint, _Mapping]]] = ...) -> None: ...

class MethodSpec(_message.Message):
    __slots__ = ("preset", "reward_side", "trajectory_side")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    REWARD_SIDE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_SIDE_FIELD_NUMBER: _ClassVar[int]
    preset: str
    reward_side: _struct_pb2.Struct
    trajectory_side: _struct_pb2.Struct
    def __init__(self, preset: _Optional[str] = ..., reward_side: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trajectory_side: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: int
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[int] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class TeacherSpec(_message.Message):
    __slots__ = ("model", "endpoint", "coef")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COEF_FIELD_NUMBER: _ClassVar[int]
    model: str
    endpoint: str
    coef: float
    def __init__(self, model: _Optional[str] = ..., endpoint: _Optional[str] = ..., coef: _Optional[float] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("base_model", "method", "reward_endpoint", "group_size", "prompts_per_step", "max_new_tokens", "temperature", "top_p", "learning_rate", "lora", "max_steps", "max_staleness", "engine", "seed", "teacher", "eval", "promotion", "init_adapter", "retention", "correctness_component", "sample_every")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REWARD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    CORRECTNESS_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_EVERY_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    method: MethodSpec
    reward_endpoint: str
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    learning_rate: float
    lora: LoraSpec
    max_steps: int
    max_staleness: int
    engine: str
    seed: int
    teacher: TeacherSpec
    eval: EvalSpec
    promotion: PromotionSpec
    init_adapter: str
    retention: RetentionSpec
    correctness_component: str
    sample_every: int
    def __init__(self, base_model: _Optional[str] = ..., method: _Optional[_Union[MethodSpec, _Mapping]] = ..., reward_endpoint: _Optional[str] = ..., group_size: _Optional[int] = ..., prompts_per_step: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., learning_rate: _Optional[float] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., max_steps: _Optional[int] = ..., max_staleness: _Optional[int] = ..., engine: _Optional[str] = ..., seed: _Optional[int] = ..., teacher: _Optional[_Union[TeacherSpec, _Mapping]] = ..., eval: _Optional[_Union[EvalSpec, _Mapping]] = ..., promotion: _Optional[_Union[PromotionSpec, _Mapping]] = ..., init_adapter: _Optional[str] = ..., retention: _Optional[_Union[RetentionSpec, _Mapping]] = ..., correctness_component: _Optional[str] = ..., sample_every: _Optional[int] = ...) -> None: ...

class EvalSpec(_message.Message):
    __slots__ = ("prompts", "every", "samples", "reward_endpoint", "temperature", "success_threshold")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REWARD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    every: int
    samples: int
    reward_endpoint: str
    temperature: float
    success_threshold: float
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., every: _Optional[int] = ..., samples: _Optional[int] = ..., reward_endpoint: _Optional[str] = ..., temperature: _Optional[float] = ..., success_threshold: _Optional[float] = ...) -> None: ...

class PromotionSpec(_message.Message):
    __slots__ = ("rule", "margin", "threshold", "stop_at_metric", "patience")
    RULE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_METRIC_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    margin: float
    threshold: float
    stop_at_metric: float
    patience: int
    def __init__(self, rule: _Optional[str] = ..., margin: _Optional[float] = ..., threshold: _Optional[float] = ..., stop_at_metric: _Optional[float] = ..., patience: _Optional[int] = ...) -> None: ...

class RetentionSpec(_message.Message):
    __slots__ = ("keep_versions", "keep_trainer_states")
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_TRAINER_STATES_FIELD_NUMBER: _ClassVar[int]
    keep_versions: int
    keep_trainer_states: int
    def __init__(self, keep_versions: _Optional[int] = ..., keep_trainer_states: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "status", "base_model", "method", "reward_endpoint", "group_size", "prompts_per_step", "max_new_tokens", "temperature", "top_p", "learning_rate", "lora", "max_steps", "max_staleness", "engine", "seed", "teacher", "version", "step", "prompts_submitted", "groups_trained", "created_at", "error", "resolved_method", "eval", "promotion", "init_adapter", "retention", "correctness_component", "sample_every", "eval_prompt_count", "promoted_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REWARD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_METHOD_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    CORRECTNESS_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_EVERY_FIELD_NUMBER: _ClassVar[int]
    EVAL_PROMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    base_model: str
    method: MethodSpec
    reward_endpoint: str
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    learning_rate: float
    lora: LoraSpec
    max_steps: int
    max_staleness: int
    engine: str
    seed: int
    teacher: TeacherSpec
    version: int
    step: int
    prompts_submitted: int
    groups_trained: int
    created_at: float
    error: str
    resolved_method: MethodSpec
    eval: EvalSpec
    promotion: PromotionSpec
    init_adapter: str
    retention: RetentionSpec
    correctness_component: str
    sample_every: int
    eval_prompt_count: int
    promoted_version: int
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., base_model: _Optional[str] = ..., method: _Optional[_Union[MethodSpec, _Mapping]] = ..., reward_endpoint: _Optional[str] = ..., group_size: _Optional[int] = ..., prompts_per_step: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., learning_rate: _Optional[float] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., max_steps: _Optional[int] = ..., max_staleness: _Optional[int] = ..., engine: _Optional[str] = ..., seed: _Optional[int] = ..., teacher: _Optional[_Union[TeacherSpec, _Mapping]] = ..., version: _Optional[int] = ..., step: _Optional[int] = ..., prompts_submitted: _Optional[int] = ..., groups_trained: _Optional[int] = ..., created_at: _Optional[float] = ..., error: _Optional[str] = ..., resolved_method: _Optional[_Union[MethodSpec, _Mapping]] = ..., eval: _Optional[_Union[EvalSpec, _Mapping]] = ..., promotion: _Optional[_Union[PromotionSpec, _Mapping]] = ..., init_adapter: _Optional[str] = ..., retention: _Optional[_Union[RetentionSpec, _Mapping]] = ..., correctness_component: _Optional[str] = ..., sample_every: _Optional[int] = ..., eval_prompt_count: _Optional[int] = ..., promoted_version: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_event_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_event_id: str
    def __init__(self, run_id: _Optional[str] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class CompletionSample(_message.Message):
    __slots__ = ("prompt", "completion", "reward", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion: str
    reward: float
    components: _containers.ScalarMap[str, float]
    def __init__(self, prompt: _Optional[str] = ..., completion: _Optional[str] = ..., reward: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_id", "run_id", "kind", "message", "step", "version", "metrics", "timestamp", "samples")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    run_id: str
    kind: EventKind
    message: str
    step: int
    version: int
    metrics: _containers.ScalarMap[str, float]
    timestamp: float
    samples: _containers.RepeatedCompositeFieldContainer[CompletionSample]
    def __init__(self, event_id: _Optional[str] = ..., run_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., message: _Optional[str] = ..., step: _Optional[int] = ..., version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., timestamp: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[CompletionSample, _Mapping]]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text", "metadata")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    text: str
    metadata: _struct_pb2.Struct
    def __init__(self, text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SubmitPromptsRequest(_message.Message):
    __slots__ = ("run_id", "prompts")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    def __init__(self, run_id: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ...) -> None: ...

class SubmitPromptsResponse(_message.Message):
    __slots__ = ("prompt_ids",)
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("role", "token_ids", "logprobs", "adapter_version", "reward")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    role: TurnRole
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    adapter_version: int
    reward: float
    def __init__(self, role: _Optional[_Union[TurnRole, str]] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., adapter_version: _Optional[int] = ..., reward: _Optional[float] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("prompt_ids", "turns", "reward")
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    reward: float
    def __init__(self, prompt_ids: _Optional[_Iterable[int]] = ..., turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., reward: _Optional[float] = ...) -> None: ...

class TrajectoryGroupInput(_message.Message):
    __slots__ = ("trajectories", "metadata")
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    trajectories: _containers.RepeatedCompositeFieldContainer[Trajectory]
    metadata: _struct_pb2.Struct
    def __init__(self, trajectories: _Optional[_Iterable[_Union[Trajectory, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SubmitTrajectoriesRequest(_message.Message):
    __slots__ = ("run_id", "groups")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    groups: _containers.RepeatedCompositeFieldContainer[TrajectoryGroupInput]
    def __init__(self, run_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[TrajectoryGroupInput, _Mapping]]] = ...) -> None: ...

class SubmitTrajectoriesResponse(_message.Message):
    __slots__ = ("group_ids",)
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, group_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AdapterVersion(_message.Message):
    __slots__ = ("run_id", "version", "step", "base_model", "method", "metrics", "files", "created_at", "resolved_method", "promoted", "eval", "parent")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EvalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_METHOD_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: int
    step: int
    base_model: str
    method: str
    metrics: _containers.ScalarMap[str, float]
    files: _containers.ScalarMap[str, str]
    created_at: float
    resolved_method: MethodSpec
    promoted: bool
    eval: _containers.ScalarMap[str, float]
    parent: str
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[int] = ..., step: _Optional[int] = ..., base_model: _Optional[str] = ..., method: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., files: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[float] = ..., resolved_method: _Optional[_Union[MethodSpec, _Mapping]] = ..., promoted: _Optional[bool] = ..., eval: _Optional[_Mapping[str, float]] = ..., parent: _Optional[str] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("run_id", "promoted_only")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    promoted_only: bool
    def __init__(self, run_id: _Optional[str] = ..., promoted_only: _Optional[bool] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[AdapterVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[AdapterVersion, _Mapping]]] = ...) -> None: ...

class PullAdapterRequest(_message.Message):
    __slots__ = ("run_id", "version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: str
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("manifest", "file_name", "data", "last", "sha256")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    manifest: AdapterVersion
    file_name: str
    data: bytes
    last: bool
    sha256: str
    def __init__(self, manifest: _Optional[_Union[AdapterVersion, _Mapping]] = ..., file_name: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...

class WatchAdaptersRequest(_message.Message):
    __slots__ = ("run_id", "after_version", "promoted_only")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_version: int
    promoted_only: bool
    def __init__(self, run_id: _Optional[str] = ..., after_version: _Optional[int] = ..., promoted_only: _Optional[bool] = ...) -> None: ...

class AddEvalPromptsRequest(_message.Message):
    __slots__ = ("run_id", "prompts")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    def __init__(self, run_id: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ...) -> None: ...

class AddEvalPromptsResponse(_message.Message):
    __slots__ = ("eval_prompt_count",)
    EVAL_PROMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    eval_prompt_count: int
    def __init__(self, eval_prompt_count: _Optional[int] = ...) -> None: ...

class UploadAdapterChunk(_message.Message):
    __slots__ = ("base_model", "file_name", "data", "last", "sha256")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    file_name: str
    data: bytes
    last: bool
    sha256: str
    def __init__(self, base_model: _Optional[str] = ..., file_name: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadedAdapter(_message.Message):
    __slots__ = ("upload_id", "base_model", "rank", "target_modules", "files", "alpha")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    base_model: str
    rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    files: _containers.ScalarMap[str, str]
    alpha: int
    def __init__(self, upload_id: _Optional[str] = ..., base_model: _Optional[str] = ..., rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., files: _Optional[_Mapping[str, str]] = ..., alpha: _Optional[int] = ...) -> None: ...

class FinishEpisodeRequest(_message.Message):
    __slots__ = ("run_id", "session_id", "reward", "task_key", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    session_id: str
    reward: float
    task_key: str
    components: _containers.ScalarMap[str, float]
    def __init__(self, run_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reward: _Optional[float] = ..., task_key: _Optional[str] = ..., components: _Optional[_Mapping[str, float]] = ...) -> None: ...

class FinishEpisodeResponse(_message.Message):
    __slots__ = ("trajectories", "model_tokens", "pending_in_group", "group_id")
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PENDING_IN_GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    trajectories: int
    model_tokens: int
    pending_in_group: int
    group_id: str
    def __init__(self, trajectories: _Optional[int] = ..., model_tokens: _Optional[int] = ..., pending_in_group: _Optional[int] = ..., group_id: _Optional[str] = ...) -> None: ...

class ListMethodsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodParameter(_message.Message):
    __slots__ = ("name", "type", "default", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default: str
    doc: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default: _Optional[str] = ..., doc: _Optional[str] = ...) -> None: ...

class MethodChoiceInfo(_message.Message):
    __slots__ = ("axis", "name", "rationale", "parameters")
    AXIS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    axis: str
    name: str
    rationale: str
    parameters: _containers.RepeatedCompositeFieldContainer[MethodParameter]
    def __init__(self, axis: _Optional[str] = ..., name: _Optional[str] = ..., rationale: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[MethodParameter, _Mapping]]] = ...) -> None: ...

class PresetInfo(_message.Message):
    __slots__ = ("name", "description", "reward_side", "trajectory_side")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_SIDE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_SIDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    reward_side: _struct_pb2.Struct
    trajectory_side: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., reward_side: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trajectory_side: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListMethodsResponse(_message.Message):
    __slots__ = ("choices", "presets")
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedCompositeFieldContainer[MethodChoiceInfo]
    presets: _containers.RepeatedCompositeFieldContainer[PresetInfo]
    def __init__(self, choices: _Optional[_Iterable[_Union[MethodChoiceInfo, _Mapping]]] = ..., presets: _Optional[_Iterable[_Union[PresetInfo, _Mapping]]] = ...) -> None: ...
