from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]

class ProposerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROPOSER_KIND_UNSPECIFIED: _ClassVar[ProposerKind]
    PROPOSER_KIND_DRAFT_MODEL: _ClassVar[ProposerKind]
    PROPOSER_KIND_NGRAM: _ClassVar[ProposerKind]
    PROPOSER_KIND_HYBRID: _ClassVar[ProposerKind]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP: FinishReason
PROPOSER_KIND_UNSPECIFIED: ProposerKind
PROPOSER_KIND_DRAFT_MODEL: ProposerKind
PROPOSER_KIND_NGRAM: ProposerKind
PROPOSER_KIND_HYBRID: ProposerKind

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class SpeculationStats(_message.Message):
    __slots__ = ("drafts", "draft_tokens", "accepted_tokens", "accepted_per_position", "mean_acceptance_length", "cycles", "overlap_hits", "overlap_misses", "draft_tokens_by_proposer", "accepted_tokens_by_proposer")
    class DraftTokensByProposerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class AcceptedTokensByProposerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_PER_POSITION_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCEPTANCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_HITS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_MISSES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_BY_PROPOSER_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_BY_PROPOSER_FIELD_NUMBER: _ClassVar[int]
    drafts: int
    draft_tokens: int
    accepted_tokens: int
    accepted_per_position: _containers.RepeatedScalarFieldContainer[int]
    mean_acceptance_length: float
    cycles: int
    overlap_hits: int
    overlap_misses: int
    draft_tokens_by_proposer: _containers.ScalarMap[str, int]
    accepted_tokens_by_proposer: _containers.ScalarMap[str, int]
    def __init__(self, drafts: _Optional[int] = ..., draft_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., accepted_per_position: _Optional[_Iterable[int]] = ..., mean_acceptance_length: _Optional[float] = ..., cycles: _Optional[int] = ..., overlap_hits: _Optional[int] = ..., overlap_misses: _Optional[int] = ..., draft_tokens_by_proposer: _Optional[_Mapping[str, int]] = ..., accepted_tokens_by_proposer: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LatencyBreakdown(_message.Message):
    __slots__ = ("time_to_first_token_ms", "draft_ms", "verify_ms", "network_wait_ms", "total_ms", "queue_ms")
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    time_to_first_token_ms: float
    draft_ms: float
    verify_ms: float
    network_wait_ms: float
    total_ms: float
    queue_ms: float
    def __init__(self, time_to_first_token_ms: _Optional[float] = ..., draft_ms: _Optional[float] = ..., verify_ms: _Optional[float] = ..., network_wait_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class ComputePlacement(_message.Message):
    __slots__ = ("host_id", "gpu_uuid", "cpus")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    gpu_uuid: str
    cpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[str] = ..., gpu_uuid: _Optional[str] = ..., cpus: _Optional[_Iterable[int]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model", "vocab_fingerprint", "active_sessions", "free_kv_slots", "max_sessions", "context_length", "role", "proposer", "own_draft")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FREE_KV_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    OWN_DRAFT_FIELD_NUMBER: _ClassVar[int]
    model: str
    vocab_fingerprint: str
    active_sessions: int
    free_kv_slots: int
    max_sessions: int
    context_length: int
    role: str
    proposer: ProposerKind
    own_draft: str
    def __init__(self, model: _Optional[str] = ..., vocab_fingerprint: _Optional[str] = ..., active_sessions: _Optional[int] = ..., free_kv_slots: _Optional[int] = ..., max_sessions: _Optional[int] = ..., context_length: _Optional[int] = ..., role: _Optional[str] = ..., proposer: _Optional[_Union[ProposerKind, str]] = ..., own_draft: _Optional[str] = ...) -> None: ...
