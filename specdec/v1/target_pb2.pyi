from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetGenerateRequest(_message.Message):
    __slots__ = ("session_id", "prompt_ids", "sampling", "seed", "max_new_tokens", "ignore_eos", "k", "draft_address", "overlap", "adaptive_k", "own_draft")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_K_FIELD_NUMBER: _ClassVar[int]
    OWN_DRAFT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    seed: int
    max_new_tokens: int
    ignore_eos: bool
    k: int
    draft_address: str
    overlap: bool
    adaptive_k: bool
    own_draft: bool
    def __init__(self, session_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., k: _Optional[int] = ..., draft_address: _Optional[str] = ..., overlap: _Optional[bool] = ..., adaptive_k: _Optional[bool] = ..., own_draft: _Optional[bool] = ...) -> None: ...

class CycleInfo(_message.Message):
    __slots__ = ("k", "accepted", "verify_ms", "wait_for_draft_ms", "draft_ms", "overlap_hit", "draft_sources", "queued_ms", "committed")
    K_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_HIT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    QUEUED_MS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    k: int
    accepted: int
    verify_ms: float
    wait_for_draft_ms: float
    draft_ms: float
    overlap_hit: bool
    draft_sources: _containers.RepeatedScalarFieldContainer[_common_pb2.ProposerKind]
    queued_ms: float
    committed: int
    def __init__(self, k: _Optional[int] = ..., accepted: _Optional[int] = ..., verify_ms: _Optional[float] = ..., wait_for_draft_ms: _Optional[float] = ..., draft_ms: _Optional[float] = ..., overlap_hit: _Optional[bool] = ..., draft_sources: _Optional[_Iterable[_Union[_common_pb2.ProposerKind, str]]] = ..., queued_ms: _Optional[float] = ..., committed: _Optional[int] = ...) -> None: ...

class TargetGenerateResponse(_message.Message):
    __slots__ = ("start", "token_ids", "cycles", "finish_reason", "draft_failed")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FAILED_FIELD_NUMBER: _ClassVar[int]
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    cycles: _containers.RepeatedCompositeFieldContainer[CycleInfo]
    finish_reason: _common_pb2.FinishReason
    draft_failed: bool
    def __init__(self, start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., cycles: _Optional[_Iterable[_Union[CycleInfo, _Mapping]]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., draft_failed: _Optional[bool] = ...) -> None: ...

class DescribeTargetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeTargetResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ServerInfo
    def __init__(self, info: _Optional[_Union[_common_pb2.ServerInfo, _Mapping]] = ...) -> None: ...
