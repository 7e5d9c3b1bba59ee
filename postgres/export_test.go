package postgres

// UserAtSQL lets tests explain the query behind UserAt.
const UserAtSQL = userAtSQL

// SeriesSQL and UsersSQL let tests explain the queries behind BalanceSeries and Users.
const (
	SeriesSQL = seriesSQL
	UsersSQL  = usersSQL
)
