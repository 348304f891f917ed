from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProposeStart(_message.Message):
    __slots__ = ("session_id", "prompt_ids", "sampling", "seed", "k", "overlap", "target_placement", "paused")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    TARGET_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    seed: int
    k: int
    overlap: bool
    target_placement: _common_pb2.ComputePlacement
    paused: bool
    def __init__(self, session_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., k: _Optional[int] = ..., overlap: _Optional[bool] = ..., target_placement: _Optional[_Union[_common_pb2.ComputePlacement, _Mapping]] = ..., paused: _Optional[bool] = ...) -> None: ...

class ProposeVerdict(_message.Message):
    __slots__ = ("start", "token_ids", "next_k", "verified_k", "accepted", "verify_ms", "verified_source")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_K_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_K_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_SOURCE_FIELD_NUMBER: _ClassVar[int]
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    next_k: int
    verified_k: int
    accepted: int
    verify_ms: float
    verified_source: _common_pb2.ProposerKind
    def __init__(self, start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., next_k: _Optional[int] = ..., verified_k: _Optional[int] = ..., accepted: _Optional[int] = ..., verify_ms: _Optional[float] = ..., verified_source: _Optional[_Union[_common_pb2.ProposerKind, str]] = ...) -> None: ...

class ProposeRowRequest(_message.Message):
    __slots__ = ("proposal_id", "index")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    proposal_id: int
    index: int
    def __init__(self, proposal_id: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("start", "verdict", "row_request")
    START_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ROW_REQUEST_FIELD_NUMBER: _ClassVar[int]
    start: ProposeStart
    verdict: ProposeVerdict
    row_request: ProposeRowRequest
    def __init__(self, start: _Optional[_Union[ProposeStart, _Mapping]] = ..., verdict: _Optional[_Union[ProposeVerdict, _Mapping]] = ..., row_request: _Optional[_Union[ProposeRowRequest, _Mapping]] = ...) -> None: ...

class DraftProposal(_message.Message):
    __slots__ = ("id", "start", "token_ids", "token_probs", "draft_ms", "ahead", "source", "token_sources", "catch_up_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_PROBS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SOURCES_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_probs: _containers.RepeatedScalarFieldContainer[float]
    draft_ms: float
    ahead: bool
    source: _common_pb2.ProposerKind
    token_sources: _containers.RepeatedScalarFieldContainer[_common_pb2.ProposerKind]
    catch_up_ms: float
    def __init__(self, id: _Optional[int] = ..., start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., token_probs: _Optional[_Iterable[float]] = ..., draft_ms: _Optional[float] = ..., ahead: _Optional[bool] = ..., source: _Optional[_Union[_common_pb2.ProposerKind, str]] = ..., token_sources: _Optional[_Iterable[_Union[_common_pb2.ProposerKind, str]]] = ..., catch_up_ms: _Optional[float] = ...) -> None: ...

class DraftProposals(_message.Message):
    __slots__ = ("proposals",)
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[DraftProposal]
    def __init__(self, proposals: _Optional[_Iterable[_Union[DraftProposal, _Mapping]]] = ...) -> None: ...

class DraftRow(_message.Message):
    __slots__ = ("proposal_id", "index", "ids", "probs")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    proposal_id: int
    index: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, proposal_id: _Optional[int] = ..., index: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("proposal", "row", "proposals")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    proposal: DraftProposal
    row: DraftRow
    proposals: DraftProposals
    def __init__(self, proposal: _Optional[_Union[DraftProposal, _Mapping]] = ..., row: _Optional[_Union[DraftRow, _Mapping]] = ..., proposals: _Optional[_Union[DraftProposals, _Mapping]] = ...) -> None: ...

class DescribeDraftRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeDraftResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ServerInfo
    def __init__(self, info: _Optional[_Union[_common_pb2.ServerInfo, _Mapping]] = ...) -> None: ...
