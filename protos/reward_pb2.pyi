from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Edit(_message.Message):
    __slots__ = ("edit_id", "group_id", "policy_version", "instruction", "source_image", "edited_image", "edit_mask", "target_image")
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    EDITED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    EDIT_MASK_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    group_id: str
    policy_version: int
    instruction: str
    source_image: bytes
    edited_image: bytes
    edit_mask: bytes
    target_image: bytes
    def __init__(self, edit_id: _Optional[str] = ..., group_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., instruction: _Optional[str] = ..., source_image: _Optional[bytes] = ..., edited_image: _Optional[bytes] = ..., edit_mask: _Optional[bytes] = ..., target_image: _Optional[bytes] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group_id", "source_image", "edit_mask", "target_image")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    EDIT_MASK_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    source_image: bytes
    edit_mask: bytes
    target_image: bytes
    def __init__(self, group_id: _Optional[str] = ..., source_image: _Optional[bytes] = ..., edit_mask: _Optional[bytes] = ..., target_image: _Optional[bytes] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("edits", "groups")
    EDITS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    def __init__(self, edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ...) -> None: ...

class EditScore(_message.Message):
    __slots__ = ("edit_id", "scored", "error", "warnings")
    EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    edit_id: str
    scored: Scored
    error: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, edit_id: _Optional[str] = ..., scored: _Optional[_Union[Scored, _Mapping]] = ..., error: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Scored(_message.Message):
    __slots__ = ("score", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    score: float
    components: _containers.ScalarMap[str, float]
    def __init__(self, score: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("scores", "service", "elapsed_s")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[EditScore]
    service: str
    elapsed_s: float
    def __init__(self, scores: _Optional[_Iterable[_Union[EditScore, _Mapping]]] = ..., service: _Optional[str] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("service", "score_name", "settings", "version", "max_batch_edits")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SCORE_NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_EDITS_FIELD_NUMBER: _ClassVar[int]
    service: str
    score_name: str
    settings: _containers.ScalarMap[str, str]
    version: str
    max_batch_edits: int
    def __init__(self, service: _Optional[str] = ..., score_name: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ..., max_batch_edits: _Optional[int] = ...) -> None: ...
