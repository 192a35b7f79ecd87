"""AWS: temporary credentials from STS, signed with Signature Version 4.

`aws_assume_role` (AssumeRole with a key pair, or with another AWS provider's credentials: role chaining;
AssumeRoleWithWebIdentity with a platform's OIDC token)
`aws_session_token` (GetSessionToken), and `aws_ecr` (ECR's GetAuthorizationToken with another AWS provider's
credentials: a registry password for Docker). Their settings are in config.py, the signer in sigv4.py, the
STS calls in sts.py, ECR's in ecr.py; the signer and the calls import only the standard library, and only a
daemon with an AWS provider builds them.
"""

from __future__ import annotations

from tokend.providers.aws.config import AwsAssumeRoleConfig, AwsEcrConfig, AwsSessionTokenConfig
from tokend.providers.base import Kind

__all__ = ["ASSUME_ROLE", "ECR", "SESSION_TOKEN", "AwsAssumeRoleConfig", "AwsEcrConfig", "AwsSessionTokenConfig"]

ASSUME_ROLE_EXAMPLE = """\
[providers.aws]
kind = "aws_assume_role"
role_arn = "arn:aws:iam::123456789012:role/my-app"
access_key_id = { env = "AWS_ACCESS_KEY_ID" }         # an IAM user's key pair allowed to assume the role
secret_access_key = { env = "AWS_SECRET_ACCESS_KEY" }
# Keyless, instead of the key pair: a platform's OIDC token, read anew at every login
# web_identity_token = { file = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" }
# duration = 3600                          # seconds, 1800 to 43200 (the role's maximum session duration)
# region = "eu-west-1"                     # STS's regional endpoint; default the global one
# external_id = "..."                      # when the role's trust policy asks for one
"""

SESSION_TOKEN_EXAMPLE = """\
[providers.aws-session]
kind = "aws_session_token"
access_key_id = { env = "AWS_SESSION_ACCESS_KEY_ID" }
secret_access_key = { env = "AWS_SESSION_SECRET_ACCESS_KEY" }
# duration = 43200                         # seconds, 1800 to 129600
"""

ECR_EXAMPLE = """\
[providers.ecr-role]                       # the AWS credentials ECR is asked with: any AWS provider
kind = "aws_assume_role"
role_arn = "arn:aws:iam::123456789012:role/ecr-pull"
access_key_id = { env = "ECR_ROLE_ACCESS_KEY_ID" }
secret_access_key = { env = "ECR_ROLE_SECRET_ACCESS_KEY" }

[providers.ecr]
kind = "aws_ecr"                           # Docker's password for the account's registry, 12 hours long
source = "ecr-role"
region = "eu-west-1"                       # the registry's region
# docker_registries = ["123456789012.dkr.ecr.eu-west-1.amazonaws.com"]   # default: the one ECR names
"""

ASSUME_ROLE = Kind("aws_assume_role", AwsAssumeRoleConfig,
                   "tokend.providers.aws.sts:AssumeRole", example=ASSUME_ROLE_EXAMPLE)
SESSION_TOKEN = Kind("aws_session_token", AwsSessionTokenConfig,
                     "tokend.providers.aws.sts:SessionToken", example=SESSION_TOKEN_EXAMPLE)
ECR = Kind("aws_ecr", AwsEcrConfig, "tokend.providers.aws.ecr:AuthorizationToken", example=ECR_EXAMPLE)
