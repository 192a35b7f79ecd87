"""The AWS kinds' settings. Only models here: loading a config imports this module whatever its kinds,
so the signer and the logins live in modules of their own."""

from __future__ import annotations

import json
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret
from tokend.providers.base import ProviderBase
from tokend.providers.subject_token import SubjectToken, source_names

__all__ = [
    "AWS_KINDS",
    "MIN_DURATION",
    "RENEW_BEFORE",
    "AwsAssumeRoleConfig",
    "AwsEcrConfig",
    "AwsKeyPair",
    "AwsSessionTokenConfig",
    "session_name",
]

# AWS SDKs refresh a credential 15 minutes (advisory) and 10 minutes (mandatory) before it expires: tokend
# renews 20 minutes before, so that no SDK is ever handed one it would refresh at once...
RENEW_BEFORE = 1200.0
# ...and a credential shorter than this would spend most of its life being renewed.
MIN_DURATION = 1800
# AWS's limit on a session of a role assumed with another role's credentials (role chaining).
CHAINED_MAX_DURATION = 3600
AWS_KINDS = ("aws_assume_role", "aws_session_token")

_REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")


def session_name(provider: str) -> str:
    """The role session name of provider `provider` when none is set: `tokend-NAME`, reduced to AWS's
    pattern (shows in CloudTrail as who assumed the role)."""
    return re.sub(r"[^\w+=,.@-]", "-", f"tokend-{provider}")[:64]


class AwsKeyPair(ProviderBase):
    """What the AWS kinds share: an access key pair, and where STS is."""

    NOT_LOGIN: ClassVar[frozenset[str]] = ProviderBase.NOT_LOGIN | {"aws_service", "aws_region"}
    RENEW_BEFORE_EXPIRY: ClassVar[float | None] = RENEW_BEFORE
    MAX_DURATION: ClassVar[int]

    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None  # the key pair's own, when it is itself temporary
    duration: int = 3600
    region: str | None = Field(default=None, pattern=_REGION)  # STS's regional endpoint; default the global one
    sts_url: UpstreamURL | None = None  # a VPC endpoint, a test: signed for region, else us-east-1
    # The proxy signs requests to api_url with these (SigV4): the service's signing name ("s3", "dynamodb",
    # "execute-api") and its region (default region, else us-east-1).
    aws_service: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")
    aws_region: str | None = Field(default=None, pattern=_REGION)

    @property
    def url(self) -> str:
        if self.sts_url is not None:
            return self.sts_url
        return f"https://sts.{self.region}.amazonaws.com" if self.region else "https://sts.amazonaws.com"

    @property
    def signing_region(self) -> str:
        return self.region or "us-east-1"  # the global endpoint signs as us-east-1

    @property
    def proxy_sigv4(self) -> tuple[str, str] | None:
        return None if self.aws_service is None else (self.aws_service, self.aws_region or self.signing_region)

    @model_validator(mode="after")
    def _proxy_signs_for_a_service(self) -> AwsKeyPair:
        if self.proxy and self.aws_service is None:
            raise ValueError('proxy = true needs aws_service, the name requests are signed for ("s3", "dynamodb", '
                             '"execute-api", ...: the service part of its endpoint, or its SigV4 signing name)')
        return self

    @model_validator(mode="after")
    def _pair_complete(self) -> AwsKeyPair:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: set both (an IAM user's access key)")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key, the temporary key pair "
                             "it belongs to")
        return self

    @model_validator(mode="after")
    def _duration_in_range(self) -> AwsKeyPair:
        if self.duration < MIN_DURATION:
            raise ValueError(
                f"duration is {self.duration} seconds; the minimum is {MIN_DURATION}: AWS SDKs refresh a "
                f"credential 15 minutes before it expires and tokend renews it {RENEW_BEFORE / 60:g} minutes "
                "before, so a shorter one would be renewed almost as soon as it is served")
        if self.duration > self.MAX_DURATION:
            raise ValueError(f"duration is {self.duration} seconds; the maximum is {self.MAX_DURATION} "
                             f"({self._max_reason()})")
        return self

    def _max_reason(self) -> str:
        return "AWS's limit"


class AwsAssumeRoleConfig(AwsKeyPair):
    """`AssumeRole` with an access key pair, or with another AWS provider's credentials (`source`); or
    `AssumeRoleWithWebIdentity` with a token the platform issues (`web_identity_token`, read at every login)."""

    MAX_DURATION: ClassVar[int] = 43200

    kind: Literal["aws_assume_role"]
    role_arn: str
    role_session_name: str | None = None  # default tokend-NAME
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    policy: str | None = None  # a session policy (JSON): narrows what the role may do
    source: str | None = Field(default=None, min_length=1)  # another AWS provider: role chaining
    # An OIDC token (a Kubernetes service account's, GitHub Actions'): { file = ... } or { provider = ... }
    web_identity_token: SubjectToken | None = None

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, value: str) -> str:
        if not _ROLE_ARN.match(value):
            raise ValueError(f"{value!r} is not a role's ARN (arn:aws:iam::123456789012:role/NAME)")
        return value

    @field_validator("role_session_name")
    @classmethod
    def _session_name(cls, value: str | None) -> str | None:
        if value is not None and not _SESSION_NAME.match(value):
            raise ValueError("must be 2 to 64 letters, digits and the characters +=,.@_- (AWS's pattern)")
        return value

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                json.loads(value)
            except ValueError:
                raise ValueError("is not JSON: a session policy is an IAM policy document") from None
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> AwsAssumeRoleConfig:
        # Where the role is assumed from: each way is one entry here.
        origins = {"access_key_id + secret_access_key": self.access_key_id is not None,
                   "source": self.source is not None, "web_identity_token": self.web_identity_token is not None}
        chosen = [name for name, given in origins.items() if given]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of {', '.join(origins)}: where the role is assumed from "
                             f"({' and '.join(chosen) + ' are set' if chosen else 'none is set'})")
        return self

    @model_validator(mode="after")
    def _chained_duration(self) -> AwsAssumeRoleConfig:
        if self.source is not None and self.duration > CHAINED_MAX_DURATION:
            raise ValueError(f"duration is {self.duration} seconds; a role assumed from another role's "
                             f"credentials (source) lasts at most {CHAINED_MAX_DURATION} (AWS's limit for role "
                             "chaining)")
        return self

    def sources(self) -> tuple[str, ...]:
        return (*(() if self.source is None else (self.source,)), *source_names(self.web_identity_token))

    def source_problem(self, source: str, config: ProviderBase) -> str | None:
        if source == self.source and not isinstance(config, AwsKeyPair):
            return (f'field "source": provider "{source}" is of kind {config.kind}; a role is assumed with '
                    f"AWS credentials ({', '.join(AWS_KINDS)})")
        return None


class AwsSessionTokenConfig(AwsKeyPair):
    """`GetSessionToken`: an IAM user's key pair for temporary credentials of the same user."""

    MAX_DURATION: ClassVar[int] = 129600
    duration: int = 43200

    kind: Literal["aws_session_token"]
    access_key_id: Secret
    secret_access_key: Secret


class AwsEcrConfig(ProviderBase):
    """ECR's `GetAuthorizationToken` with another AWS provider's credentials (`source`): a registry password
    for Docker, 12 hours long, answered to Docker's credential helper with the user name AWS."""

    kind: Literal["aws_ecr"]
    source: str = Field(min_length=1)  # the AWS provider whose credentials sign the call
    region: str = Field(pattern=_REGION)  # the registry's region
    ecr_url: UpstreamURL | None = None  # a VPC endpoint, a test: signed for region

    @property
    def url(self) -> str:
        return self.ecr_url or f"https://api.ecr.{self.region}.amazonaws.com"

    def _default_registry_username(self) -> str | None:
        return "AWS"  # what ECR's password goes with, as `aws ecr get-login-password` documents

    def sources(self) -> tuple[str, ...]:
        return (self.source,)

    def source_problem(self, source: str, config: ProviderBase) -> str | None:
        if not isinstance(config, AwsKeyPair):
            return (f'field "source": provider "{source}" is of kind {config.kind}; ECR is asked with AWS '
                    f"credentials ({', '.join(AWS_KINDS)})")
        return None
